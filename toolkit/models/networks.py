"""The networks: pix2pix's U-Net generator (Isola et al. 2017), CycleGAN's ResNet generator
(Zhu et al. 2017, after Johnson et al. 2016) and the 70x70 PatchGAN discriminator both use.

Both follow the reference code's defaults (DESIGN section 4), with two changes that let them take
any chip: any number of input and output bands, and a generator depth chosen from the chip size
(down to a 1x1 bottleneck, as the paper's), with sides that are not a multiple of 2**depth padded
(reflect) and the output cropped back.

Layer: inference core.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ArcGISPatchDiscriminator", "ArcGISUNetGenerator", "PadBands", "PatchDiscriminator", "ResnetGenerator",
           "UNetGenerator", "backbone_generator", "init_weights", "unet_depth", "SUPPORTED_BACKBONES"]

SUPPORTED_BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


def unet_depth(chip_size: int | tuple[int, int], max_depth: int = 8) -> int:
    """Downsamplings for a chip, as the paper's generator: down to a 1x1 bottleneck (8 at 256
    px, its ``unet_256``), at most 8. BatchNorm still works at batch size 1: the innermost block
    has no norm after its downsampling, so the smallest map normalised is 2x2."""
    side = min(chip_size) if isinstance(chip_size, (tuple, list)) else chip_size
    if side < 8:
        raise ValueError(f"chips of {side} px are too small for a U-Net; use 8 px or more.")
    return max(2, min(max_depth, int(math.floor(math.log2(side)))))


def _norm_layer(norm: str):
    if norm == "batch":
        return lambda c: nn.BatchNorm2d(c)
    if norm == "instance":
        return lambda c: nn.InstanceNorm2d(c, affine=False, track_running_stats=False)
    raise ValueError(f"norm must be 'batch' or 'instance', got {norm!r}.")


class _SkipBlock(nn.Module):
    """One U-Net level: down, the inner levels, up; its input is concatenated to its output."""

    def __init__(self, outer: int, inner: int, in_channels: int | None = None,
                 submodule: nn.Module | None = None, outermost: bool = False,
                 innermost: bool = False, norm: str = "batch", dropout: bool = False) -> None:
        super().__init__()
        self.outermost = outermost
        make_norm = _norm_layer(norm)
        bias = norm == "instance"  # BatchNorm has its own shift
        in_channels = outer if in_channels is None else in_channels
        down_conv = nn.Conv2d(in_channels, inner, 4, 2, 1, bias=bias)
        if outermost:
            up = nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1)
            layers = [down_conv, submodule, nn.ReLU(True), up, nn.Tanh()]
        elif innermost:
            up = nn.ConvTranspose2d(inner, outer, 4, 2, 1, bias=bias)
            layers = [nn.LeakyReLU(0.2, True), down_conv, nn.ReLU(True), up, make_norm(outer)]
        else:
            up = nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1, bias=bias)
            layers = [nn.LeakyReLU(0.2, True), down_conv, make_norm(inner), submodule,
                      nn.ReLU(True), up, make_norm(outer)] + ([nn.Dropout(0.5)] if dropout else [])
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) if self.outermost else torch.cat([x, self.model(x)], 1)


class UNetGenerator(nn.Module):
    """The pix2pix U-Net: ``(batch, n_in, h, w)`` in [-1, 1] -> ``(batch, n_out, h, w)`` in [-1, 1].

    Level ``i`` (0 = outermost) has ``ngf * min(2**i, 8)`` filters; the three up blocks just
    outside the innermost one have Dropout 0.5 (where they have ``ngf * 8`` filters), as in the
    reference code. Any ``h, w`` works: sides are padded to a multiple of ``2**depth``.
    """

    def __init__(self, n_in: int, n_out: int, *, depth: int = 8, ngf: int = 64,
                 norm: str = "batch", dropout: bool = True) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError(f"depth must be 2 or more, got {depth}.")
        self.n_in, self.n_out, self.depth, self.ngf, self.norm = n_in, n_out, depth, ngf, norm
        width = [ngf * min(2**i, 8) for i in range(depth)]
        with_dropout = set(range(max(3, depth - 4), depth - 1)) if dropout else set()
        block = _SkipBlock(width[-2], width[-1], innermost=True, norm=norm)
        for i in range(depth - 2, 0, -1):
            block = _SkipBlock(width[i - 1], width[i], submodule=block, norm=norm,
                               dropout=i in with_dropout)
        self.model = _SkipBlock(n_out, width[0], in_channels=n_in, submodule=block,
                                outermost=True, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pad_forward(self.model, x, 2**self.depth)


def pad_forward(model: nn.Module, x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Run ``model`` on ``x`` reflect-padded to a multiple of ``multiple``, cropped back."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if not (ph or pw):
        return model(x)
    top, left = ph // 2, pw // 2
    mode = "reflect" if min(h, w) > max(ph, pw) else "replicate"  # reflect needs pad < side
    y = model(F.pad(x, (left, pw - left, top, ph - top), mode=mode))
    return y[..., top:top + h, left:left + w]


class _ResnetBlock(nn.Module):
    """``x + conv(relu(norm(conv(x))))``, 3x3 convolutions with reflection padding."""

    def __init__(self, channels: int, norm: str, dropout: bool) -> None:
        super().__init__()
        make_norm, bias = _norm_layer(norm), norm == "instance"
        layers = [nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=bias), make_norm(channels),
                  nn.ReLU(True)]
        layers += [nn.Dropout(0.5)] if dropout else []
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=bias), make_norm(channels)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class ResnetGenerator(nn.Module):
    """CycleGAN's generator: ``(batch, n_in, h, w)`` in [-1, 1] -> ``(batch, n_out, h, w)`` in [-1, 1].

    As the reference ``resnet_9blocks``: c7s1-ngf, two stride-2 downsamplings (d2ngf, d4ngf),
    ``n_blocks`` residual blocks of 4 ngf filters, two fractionally strided upsamplings, c7s1-out
    and Tanh; instance norm, no dropout. Any ``h, w`` works: sides are padded to a multiple of 4.
    """

    def __init__(self, n_in: int, n_out: int, *, ngf: int = 64, n_blocks: int = 9,
                 norm: str = "instance", dropout: bool = False) -> None:
        super().__init__()
        if n_blocks < 0:
            raise ValueError(f"n_blocks must be 0 or more, got {n_blocks}.")
        self.n_in, self.n_out, self.n_blocks = n_in, n_out, n_blocks
        make_norm, bias = _norm_layer(norm), norm == "instance"
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(n_in, ngf, 7, bias=bias), make_norm(ngf),
                                   nn.ReLU(True)]
        for i in range(2):
            mult = 2**i
            layers += [nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1, bias=bias),
                       make_norm(ngf * mult * 2), nn.ReLU(True)]
        layers += [_ResnetBlock(ngf * 4, norm, dropout) for _ in range(n_blocks)]
        for i in range(2):
            mult = 2**(2 - i)
            layers += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, stride=2, padding=1,
                                          output_padding=1, bias=bias),
                       make_norm(ngf * mult // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, n_out, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pad_forward(self.model, x, 4)


class PatchDiscriminator(nn.Module):
    """The 70x70 PatchGAN: ``(batch, n_in, h, w)`` (pix2pix: input and target bands
    concatenated; CycleGAN: one domain's bands) -> ``(batch, 1, h/8 - 2, w/8 - 2)`` logits, one
    per overlapping 70x70 patch."""

    def __init__(self, n_in: int, *, ndf: int = 64, n_layers: int = 3, norm: str = "batch") -> None:
        super().__init__()
        make_norm = _norm_layer(norm)
        bias = norm == "instance"
        layers: list[nn.Module] = [nn.Conv2d(n_in, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=bias), make_norm(ndf * mult),
                       nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


# --- arcgis.learn 2.4.4's layouts -----------------------------------------------------------------
#
# arcgis.learn's Pix2Pix generator is the U-Net of the PyTorch-GAN collection rather than the
# reference code's nested one: eight named down blocks (InstanceNorm, no bias, Dropout 0.5 from the
# fourth on), seven up blocks, and a final nearest upsampling + 4x4 convolution. Same idea, other
# modules and keys, and instance norm; built here as arcgis.learn lays it out, so that its saved
# weights load key for key (toolkit.models.arcgis_learn maps the names).


class _Down(nn.Module):
    def __init__(self, n_in: int, n_out: int, norm: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(n_in, n_out, 4, 2, 1, bias=False)]
        layers += [nn.InstanceNorm2d(n_out)] if norm else []
        layers.append(nn.LeakyReLU(0.2))
        layers += [nn.Dropout(dropout)] if dropout else []
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class _Up(nn.Module):
    def __init__(self, n_in: int, n_out: int, dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.ConvTranspose2d(n_in, n_out, 4, 2, 1, bias=False), nn.InstanceNorm2d(n_out),
                                   nn.ReLU(inplace=True)]
        layers += [nn.Dropout(dropout)] if dropout else []
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.model(x), skip), 1)


class ArcGISUNetGenerator(nn.Module):
    """arcgis.learn 2.4.4's Pix2Pix generator: ``(batch, n_in, h, w)`` in [-1, 1] -> ``(batch,
    n_out, h, w)`` in [-1, 1]; 8 downsamplings (1 x 1 bottleneck at 256 px), 54.4 M parameters
    at 4 bands. Sides that are not a multiple of 256 are padded (reflect) and cropped back."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.n_in, self.n_out = n_in, n_out
        widths = [64, 128, 256, 512, 512, 512, 512, 512]
        for i, width in enumerate(widths):
            n = widths[i - 1] if i else n_in
            setattr(self, f"down{i + 1}", _Down(n, width, norm=0 < i < 7, dropout=0.5 if i >= 3 else 0.0))
        for i in range(7):  # up{i+1} meets down{7-i}
            n = 512 if i == 0 else 2 * widths[7 - i]
            setattr(self, f"up{i + 1}", _Up(n, widths[6 - i], dropout=0.5 if i < 4 else 0.0))
        self.final = nn.Sequential(nn.Upsample(scale_factor=2), nn.ZeroPad2d((1, 0, 1, 0)),
                                   nn.Conv2d(128, n_out, 4, padding=1), nn.Tanh())

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i in range(1, 9):
            x = getattr(self, f"down{i}")(x)
            skips.append(x)
        for i in range(1, 8):
            x = getattr(self, f"up{i}")(x, skips[7 - i])
        return self.final(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pad_forward(self._forward, x, 256)


class ArcGISPatchDiscriminator(nn.Module):
    """arcgis.learn 2.4.4's Pix2Pix discriminator on ``n_in`` channels (its input and target
    bands, concatenated): four stride-2 blocks (InstanceNorm after the first), a zero pad and a
    4 x 4 convolution without bias -> ``(batch, 1, h/16, w/16)`` logits."""

    def __init__(self, n_in: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(((n_in, 64), (64, 128), (128, 256), (256, 512))):
            layers += [nn.Conv2d(a, b, 4, stride=2, padding=1)]
            layers += [nn.InstanceNorm2d(b)] if i else []
            layers.append(nn.LeakyReLU(0.2, inplace=True))
        layers += [nn.ZeroPad2d((1, 0, 1, 0)), nn.Conv2d(512, 1, 4, padding=1, bias=False)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class PadBands(nn.Module):
    """``net`` on inputs whose band groups are widened to ``n_channel`` bands each by repeating a
    group's last band, keeping the first ``n_out`` output bands (all with ``None``): arcgis.learn
    gives both sides of a translation the larger band count this way (a 4 -> 1 band model has 4
    -> 4 band networks). ``groups``: the band count of each group of the input (one group for a
    generator; input and target for a pix2pix discriminator)."""

    def __init__(self, net: nn.Module, groups: list[int], n_channel: int, n_out: int | None = None) -> None:
        super().__init__()
        if any(g > n_channel for g in groups):
            raise ValueError(f"band groups {groups} do not fit networks of {n_channel} channels.")
        self.net, self.groups, self.n_channel, self.n_out = net, list(groups), n_channel, n_out

    def widen(self, x: torch.Tensor) -> torch.Tensor:
        """One group's bands widened to ``n_channel`` by repeating the last."""
        g = x.shape[1]
        return x if g >= self.n_channel else torch.cat([x, x[:, -1:].expand(-1, self.n_channel - g, -1, -1)], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts, start = [], 0
        for g in self.groups:
            parts.append(self.widen(x[:, start:start + g]))
            start += g
        y = self.net(parts[0] if len(parts) == 1 else torch.cat(parts, 1))
        return y if self.n_out is None else y[:, :self.n_out]

    def pair(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """``net`` on two images, each widened, in the order given (arcgis.learn's discriminator
        sees a generated pair as (generated target, input), a real one as (input, target))."""
        return self.net(torch.cat([self.widen(first), self.widen(second)], 1))


def init_weights(net: nn.Module, gain: float = 0.02) -> nn.Module:
    """The paper's init: conv weights N(0, 0.02), biases 0; BatchNorm weights N(1, 0.02)."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)
    return net


class _BackboneGenerator(nn.Module):
    """fastai's DynamicUnet over a torchvision ResNet, output in [-1, 1], any chip size."""

    def __init__(self, unet: nn.Module, multiple: int, n_in: int, n_out: int) -> None:
        super().__init__()
        self.unet, self.multiple, self.n_in, self.n_out = unet, multiple, n_in, n_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pad_forward(self.unet, x, self.multiple)


def backbone_generator(backbone: str, n_in: int, n_out: int, chip_size: int | tuple[int, int], *,
                       weights: str | Path | None = None) -> nn.Module:
    """A U-Net generator on a ResNet encoder (fastai ``DynamicUnet``).

    The first convolution takes ``n_in`` bands. Nothing is downloaded: ``weights`` may name a
    local torchvision ResNet state dict (``.pth``) for the encoder; its first convolution is
    adapted to the band count as fastai does (averaged over RGB, repeated).
    """
    import torchvision

    from toolkit._fastai import quiet_import

    with quiet_import():
        from fastai.vision.learner import _update_first_layer
        from fastai.vision.models.unet import DynamicUnet

    if backbone not in SUPPORTED_BACKBONES:
        raise ValueError(f"backbone must be one of {SUPPORTED_BACKBONES}, got {backbone!r}.")
    resnet = getattr(torchvision.models, backbone)(weights=None)
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"backbone weights {path}: no such file.")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            resnet.load_state_dict(state)
        except Exception as err:
            raise ValueError(f"backbone weights {path}: not a {backbone} state dict ({err}).") from err
    encoder = nn.Sequential(*list(resnet.children())[:-2])
    _update_first_layer(encoder, n_in, pretrained=weights is not None)
    side = chip_size if isinstance(chip_size, int) else max(chip_size)
    size = max(64, -(-side // 32) * 32)
    unet = DynamicUnet(encoder, n_out, (size, size), y_range=(-1.0, 1.0), norm_type=None)
    return _BackboneGenerator(unet, 32, n_in, n_out)
