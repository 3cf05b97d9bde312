"""The networks of pix2pixHD (Wang, Liu, Zhu, Tao, Kautz and Catanzaro, 2018): the coarse-to-fine
generator and the multi-scale discriminator, laid out as the reference code and arcgis.learn
2.4.4 (``_pix2pix_hd_utils.py``) lay them out, so arcgis.learn's saved weights load by name.

* :class:`GlobalGenerator` (G1): c7s1-ngf, ``n_downsampling`` stride-2 convolutions, residual
  blocks, as many fractionally strided convolutions, c7s1-out, Tanh.
* :class:`LocalEnhancer` (G2): the global generator at ``ngf * 2**n_local_enhancers`` filters on
  the input downsampled ``n_local_enhancers`` times (its last convolution dropped), and per
  enhancer a front end on the input at that scale whose features are added to the coarser
  output before its residual blocks and upsampling: output at full resolution.
* :class:`MultiscaleDiscriminator`: ``num_d`` PatchGANs of the same layout on the input pair at
  full, half, quarter... resolution; with ``intermediate=True`` each returns every layer's
  features (for the feature-matching loss), the last being the logits.

Sides that are not a multiple of the generator's downsampling are reflect-padded and the output
cropped back, so any chip works. Norm layers: ``"instance"`` (no affine parameters, as the
reference) or ``"batch"``.

Layer: inference core.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from toolkit.models.networks import pad_forward

__all__ = ["GlobalGenerator", "LocalEnhancer", "MultiscaleDiscriminator", "hd_generator"]


def _norm(norm: str):
    if norm == "instance":
        return lambda c: nn.InstanceNorm2d(c, affine=False)
    if norm == "batch":
        return lambda c: nn.BatchNorm2d(c, affine=True)
    raise ValueError(f"norm must be 'instance' or 'batch', got {norm!r}.")


class ResnetBlock(nn.Module):
    """``x + norm(conv(pad(relu(norm(conv(pad(x)))))))``, 3x3 convolutions, reflection padding."""

    def __init__(self, dim: int, norm: str) -> None:
        super().__init__()
        make_norm = _norm(norm)
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), make_norm(dim), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), make_norm(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


def _global_layers(n_in: int, n_out: int, ngf: int, n_downsampling: int, n_blocks: int, norm: str) -> list[nn.Module]:
    make_norm = _norm(norm)
    layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(n_in, ngf, 7), make_norm(ngf), nn.ReLU(True)]
    for i in range(n_downsampling):
        mult = 2**i
        layers += [nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1), make_norm(ngf * mult * 2),
                   nn.ReLU(True)]
    layers += [ResnetBlock(ngf * 2**n_downsampling, norm) for _ in range(n_blocks)]
    for i in range(n_downsampling):
        mult = 2 ** (n_downsampling - i)
        layers += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, stride=2, padding=1, output_padding=1),
                   make_norm(ngf * mult // 2), nn.ReLU(True)]
    layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, n_out, 7), nn.Tanh()]
    return layers


class GlobalGenerator(nn.Module):
    """G1: ``(batch, n_in, h, w)`` in [-1, 1] -> ``(batch, n_out, h, w)`` in [-1, 1]."""

    def __init__(self, n_in: int, n_out: int, *, ngf: int = 64, n_downsampling: int = 4, n_blocks: int = 9,
                 norm: str = "instance") -> None:
        super().__init__()
        self.multiple = 2**n_downsampling
        self.model = nn.Sequential(*_global_layers(n_in, n_out, ngf, n_downsampling, n_blocks, norm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pad_forward(self.model, x, self.multiple)


class LocalEnhancer(nn.Module):
    """G2 (``n_local_enhancers`` enhancers around G1): ``(batch, n_in, h, w)`` -> ``(batch,
    n_out, h, w)``, both in [-1, 1]. ``global_only()`` is G1's part alone (the paper's first
    training stage trains it on half-resolution input)."""

    def __init__(self, n_in: int, n_out: int, *, ngf: int = 32, n_downsample_global: int = 4,
                 n_blocks_global: int = 9, n_local_enhancers: int = 1, n_blocks_local: int = 3,
                 norm: str = "instance") -> None:
        super().__init__()
        if n_local_enhancers < 1:
            raise ValueError(f"n_local_enhancers must be 1 or more for the local generator, got {n_local_enhancers}.")
        self.n_local_enhancers = n_local_enhancers
        self.multiple = 2 ** (n_downsample_global + n_local_enhancers)
        make_norm = _norm(norm)
        coarse = _global_layers(n_in, n_out, ngf * 2**n_local_enhancers, n_downsample_global, n_blocks_global, norm)
        self.model = nn.Sequential(*coarse[:-3])  # without the final convolution: features to enhance
        for n in range(1, n_local_enhancers + 1):
            filters = ngf * 2 ** (n_local_enhancers - n)
            down = [nn.ReflectionPad2d(3), nn.Conv2d(n_in, filters, 7), make_norm(filters), nn.ReLU(True),
                    nn.Conv2d(filters, filters * 2, 3, stride=2, padding=1), make_norm(filters * 2), nn.ReLU(True)]
            up: list[nn.Module] = [ResnetBlock(filters * 2, norm) for _ in range(n_blocks_local)]
            up += [nn.ConvTranspose2d(filters * 2, filters, 3, stride=2, padding=1, output_padding=1),
                   make_norm(filters), nn.ReLU(True)]
            if n == n_local_enhancers:
                up += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, n_out, 7), nn.Tanh()]
            setattr(self, f"model{n}_1", nn.Sequential(*down))
            setattr(self, f"model{n}_2", nn.Sequential(*up))
        self.downsample = nn.AvgPool2d(3, stride=2, padding=[1, 1], count_include_pad=False)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        pyramid = [x]
        for _ in range(self.n_local_enhancers):
            pyramid.append(self.downsample(pyramid[-1]))
        out = self.model(pyramid[-1])
        for n in range(1, self.n_local_enhancers + 1):
            front = getattr(self, f"model{n}_1")(pyramid[self.n_local_enhancers - n])
            out = getattr(self, f"model{n}_2")(front + out)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pad_forward(self._forward, x, self.multiple)

    def enhancer_parameters(self) -> list[nn.Parameter]:
        """The local enhancers' parameters (what trains while the global part is fixed)."""
        return [p for name, p in self.named_parameters() if not name.startswith("model.")]


def hd_generator(n_in: int, n_out: int, *, gen_network: str, ngf: int, n_downsample_global: int,
                 n_blocks_global: int, n_local_enhancers: int, n_blocks_local: int, norm: str) -> nn.Module:
    """The generator arcgis.learn's ``gen_network`` names: ``"global"`` (G1) or ``"local"`` (G2)."""
    if gen_network == "global":
        return GlobalGenerator(n_in, n_out, ngf=ngf, n_downsampling=n_downsample_global, n_blocks=n_blocks_global,
                               norm=norm)
    if gen_network == "local":
        return LocalEnhancer(n_in, n_out, ngf=ngf, n_downsample_global=n_downsample_global,
                             n_blocks_global=n_blocks_global, n_local_enhancers=n_local_enhancers,
                             n_blocks_local=n_blocks_local, norm=norm)
    raise ValueError(f"gen_network must be 'global' or 'local', got {gen_network!r}.")


def _patchgan(n_in: int, ndf: int, n_layers: int, norm: str) -> list[list[nn.Module]]:
    """The reference's NLayerDiscriminator as its groups of layers (kernel 4, padding 2)."""
    make_norm, pad = _norm(norm), int(math.ceil(3 / 2))
    groups = [[nn.Conv2d(n_in, ndf, 4, stride=2, padding=pad), nn.LeakyReLU(0.2, True)]]
    nf = ndf
    for _ in range(1, n_layers):
        prev, nf = nf, min(nf * 2, 512)
        groups.append([nn.Conv2d(prev, nf, 4, stride=2, padding=pad), make_norm(nf), nn.LeakyReLU(0.2, True)])
    prev, nf = nf, min(nf * 2, 512)
    groups.append([nn.Conv2d(prev, nf, 4, stride=1, padding=pad), make_norm(nf), nn.LeakyReLU(0.2, True)])
    groups.append([nn.Conv2d(nf, 1, 4, stride=1, padding=pad)])
    return groups


class MultiscaleDiscriminator(nn.Module):
    """``num_d`` PatchGANs on ``(batch, n_in, h, w)`` at full, half... resolution -> per scale
    (full resolution first) the list of its layers' outputs (``intermediate``) or ``[logits]``."""

    def __init__(self, n_in: int, *, ndf: int = 64, n_layers: int = 3, norm: str = "instance", num_d: int = 2,
                 intermediate: bool = True) -> None:
        super().__init__()
        self.num_d, self.n_layers, self.intermediate = num_d, n_layers, intermediate
        for i in range(num_d):
            groups = _patchgan(n_in, ndf, n_layers, norm)
            if intermediate:
                for j, group in enumerate(groups):
                    setattr(self, f"scale{i}_layer{j}", nn.Sequential(*group))
            else:
                setattr(self, f"layer{i}", nn.Sequential(*[m for g in groups for m in g]))
        self.downsample = nn.AvgPool2d(3, stride=2, padding=[1, 1], count_include_pad=False)

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        results = []
        for i in range(self.num_d):
            k = self.num_d - 1 - i  # the reference runs its last-made PatchGAN at full resolution
            if self.intermediate:
                features, h = [], x
                for j in range(self.n_layers + 2):
                    h = getattr(self, f"scale{k}_layer{j}")(h)
                    features.append(h)
                results.append(features)
            else:
                results.append([getattr(self, f"layer{k}")(x)])
            if i != self.num_d - 1:
                x = self.downsample(x)
        return results
