"""What a model type is, without its training: its saved config, its networks, its directions.

A spec (:class:`Pix2PixSpec`, :class:`CycleGANSpec`) says which ``Toolkit.config`` keys an
``.emd`` of its ``ModelType`` holds (``config_rules``, checked by
:mod:`toolkit.models.emd_schema`), builds the networks the config describes (also on the meta
device, to check saved weights before anything is allocated) and names the generator and the
statistics of each direction of translation. The model classes (:class:`toolkit.Pix2Pix`,
:class:`toolkit.CycleGAN`) are their specs plus training on fastai; :func:`load_translation
<toolkit.models.translation.load_translation>` needs the spec alone, so inference runs without
fastai.

Layer: inference core.
"""

from __future__ import annotations

from torch import nn

from toolkit._args import size_tuple
from toolkit.data.layouts import CYCLEGAN
from toolkit.models.networks import (SUPPORTED_BACKBONES, ArcGISPatchDiscriminator, ArcGISUNetGenerator, PadBands,
                                     PatchDiscriminator, ResnetGenerator, UNetGenerator, backbone_generator)
from toolkit.models.networks_hd import MultiscaleDiscriminator, hd_generator
from toolkit.models.rules import (MAX_DEPTH, Rule, check_arcgis_channels, common_config_rules, fail, filter_rules,
                                  integer, number)

__all__ = ["SPECS", "CycleGANSpec", "ModelSpec", "Pix2PixHDSpec", "Pix2PixSpec", "spec_of"]


class ModelSpec:
    """What every spec has; see the module docstring."""

    model_type: str
    config_rules: dict
    required_networks: tuple[str, ...] = ("generator",)
    two_way = False  # two directions of translation (convert_to "b" / "a")

    @classmethod
    def build_networks(cls, config: dict, **kwargs) -> dict[str, nn.Module]:
        """The model's networks by name, as ``config`` describes them, without weight init."""
        raise NotImplementedError

    @classmethod
    def describe_networks(cls, config: dict) -> str:
        """The networks of ``config`` in a few words, for messages."""
        return cls.model_type

    @classmethod
    def validate_config(cls, config: dict, source) -> None:
        """Checks of a saved config beyond its ``config_rules`` (``ValueError`` naming ``source``)."""

    @classmethod
    def direction(cls, config: dict, convert_to: str | None) -> tuple[str, bool, str, str, str | None]:
        """``(generator, swap, cell-size key, name, convert_to)`` of one direction: the network
        that runs, whether the target's statistics scale its input (and the input's its output),
        the config key of its input's pixel size, a name for messages."""
        if convert_to is not None:
            raise ValueError(f"convert_to picks a direction of a two-way model; a {cls.model_type} has one.")
        return "generator", False, "cell_size", "model", None


class Pix2PixSpec(ModelSpec):
    """Pix2Pix: one generator, input -> target."""

    model_type = "Pix2Pix"
    required_networks = ("generator",)
    config_rules = common_config_rules(("Pix2Pix", "Classified_Tiles")) | filter_rules("ngf", "ndf") | {
        "backbone": Rule(f"null or one of {list(SUPPORTED_BACKBONES)}",
                         lambda v: v is None or v in SUPPORTED_BACKBONES),
        "depth": Rule(f"null (with a backbone) or an integer from 2 to {MAX_DEPTH}",
                      lambda v: v is None or integer(v, 2, MAX_DEPTH)),
        "norm": Rule("'batch' or 'instance'", lambda v: v in ("batch", "instance")),
        "lambda_l1": Rule("a number >= 0", lambda v: number(v, low=0)),
        "gan_weight": Rule("a number >= 0", lambda v: number(v, low=0)),
        "class_balance": Rule("true or false", lambda v: isinstance(v, bool), required=False),
        "dropout": Rule("true or false", lambda v: isinstance(v, bool), required=False),
        "mask_loss": Rule("'l1' or 'bce_dice'", lambda v: v in ("l1", "bce_dice"), required=False),
        "perceptual_loss": Rule("true or false", lambda v: isinstance(v, bool), required=False),
        "lambda_perceptual": Rule("a number >= 0", lambda v: number(v, low=0), required=False),
        "recipe": Rule("'paper' or 'arcgis'", lambda v: v in ("paper", "arcgis"), required=False),
        "perceptual_kind": Rule("null, 'discriminator' or 'vgg16'", lambda v: v in (None, "discriminator", "vgg16"),
                                required=False),
    }

    @classmethod
    def build_networks(cls, config: dict, *, backbone_weights=None) -> dict[str, nn.Module]:
        """``{"generator", "discriminator"}`` as ``config`` describes them, without the paper's
        weight init; on the meta device for checking a saved model's weights."""
        n_in, n_out = config["n_bands_in"], config["n_bands_out"]
        if config.get("architecture") == "arcgis":  # arcgis.learn's layout, both sides n_channel bands
            nc = config["n_channel"]
            return {"generator": PadBands(ArcGISUNetGenerator(nc, nc), [n_in], nc, n_out),
                    "discriminator": PadBands(ArcGISPatchDiscriminator(2 * nc), [n_in, n_out], nc)}
        if config["backbone"]:
            generator = backbone_generator(config["backbone"], n_in, n_out, size_tuple(config["chip_size"]),
                                           weights=backbone_weights)
        else:
            generator = UNetGenerator(n_in, n_out, depth=config["depth"], ngf=config["ngf"], norm=config["norm"],
                                      dropout=config.get("dropout", True))
        return {"generator": generator,
                "discriminator": PatchDiscriminator(n_in + n_out, ndf=config["ndf"], norm=config["norm"])}

    @classmethod
    def describe_networks(cls, config: dict) -> str:
        if config.get("architecture") == "arcgis":
            return f"arcgis.learn's U-Net (8 down) and PatchGAN, {config['n_channel']} channels"
        net = f"{config['backbone']} U-Net" if config["backbone"] else \
            f"U-Net depth {config['depth']}, ngf {config['ngf']}"
        return f"{net}, PatchGAN ndf {config['ndf']}"

    @classmethod
    def validate_config(cls, config: dict, source) -> None:
        check_arcgis_channels(config, source)
        if config.get("architecture") == "arcgis" and config["backbone"] is not None:
            fail(source, "Toolkit.config.backbone", "null (arcgis.learn's layout has its own U-Net)",
                 config["backbone"])
        if config["backbone"] is None and config["depth"] is None:
            fail(source, "Toolkit.config.depth", f"an integer from 2 to {MAX_DEPTH} (no backbone)", None)



class Pix2PixHDSpec(ModelSpec):
    """Pix2PixHD: a coarse-to-fine generator (global, or local enhancers around it), input -> target."""

    model_type = "Pix2PixHD"
    required_networks = ("generator",)
    config_rules = common_config_rules(("Pix2Pix",)) | filter_rules("n_gen_filters", "n_dscr_filters") | {
        "gen_network": Rule("'global' or 'local'", lambda v: v in ("global", "local")),
        "n_downsample_global": Rule("an integer from 1 to 8", lambda v: integer(v, 1, 8)),
        "n_blocks_global": Rule("an integer from 0 to 64", lambda v: integer(v, 0, 64)),
        "n_local_enhancers": Rule("an integer from 1 to 4", lambda v: integer(v, 1, 4)),
        "n_blocks_local": Rule("an integer from 0 to 64", lambda v: integer(v, 0, 64)),
        "norm": Rule("'batch' or 'instance'", lambda v: v in ("batch", "instance")),
        "lsgan": Rule("true or false", lambda v: isinstance(v, bool)),
        "n_layers_dscr": Rule("an integer from 1 to 8", lambda v: integer(v, 1, 8)),
        "n_dscr": Rule("an integer from 1 to 8", lambda v: integer(v, 1, 8)),
        "feat_loss": Rule("true or false", lambda v: isinstance(v, bool)),
        "vgg_loss": Rule("true or false", lambda v: isinstance(v, bool)),
        "lambda_feat": Rule("a number >= 0", lambda v: number(v, low=0)),
        "l1_loss": Rule("true or false", lambda v: isinstance(v, bool)),
        "lambda_l1": Rule("a number >= 0", lambda v: number(v, low=0)),
    }

    @classmethod
    def build_networks(cls, config: dict) -> dict[str, nn.Module]:
        """``{"generator", "discriminator"}`` as ``config`` describes them, without weight init."""
        n_in, n_out = config["n_bands_in"], config["n_bands_out"]
        gen = dict(gen_network=config["gen_network"], ngf=config["n_gen_filters"],
                   n_downsample_global=config["n_downsample_global"], n_blocks_global=config["n_blocks_global"],
                   n_local_enhancers=config["n_local_enhancers"], n_blocks_local=config["n_blocks_local"],
                   norm=config["norm"])
        disc = dict(ndf=config["n_dscr_filters"], n_layers=config["n_layers_dscr"], norm=config["norm"],
                    num_d=config["n_dscr"], intermediate=config["feat_loss"])
        if config.get("architecture") == "arcgis":  # arcgis.learn's: both sides widened to n_channel bands
            nc = config["n_channel"]
            return {"generator": PadBands(hd_generator(nc, nc, **gen), [n_in], nc, n_out),
                    "discriminator": PadBands(MultiscaleDiscriminator(2 * nc, **disc), [n_in, n_out], nc)}
        return {"generator": hd_generator(n_in, n_out, **gen),
                "discriminator": MultiscaleDiscriminator(n_in + n_out, **disc)}

    @classmethod
    def describe_networks(cls, config: dict) -> str:
        generator = ("global generator" if config["gen_network"] == "global" else
                     f"{config['n_local_enhancers']} local enhancer(s) around a global generator")
        return (f"{generator}, ngf {config['n_gen_filters']}, {config['n_dscr']} PatchGANs ndf "
                f"{config['n_dscr_filters']}")

    @classmethod
    def validate_config(cls, config: dict, source) -> None:
        check_arcgis_channels(config, source)


DIRECTIONS = ("b", "a")  # convert_to: "b" runs G_AB (A -> B), "a" runs G_BA


class CycleGANSpec(ModelSpec):
    """CycleGAN: two generators, A -> B (``convert_to="b"``) and B -> A (``"a"``)."""

    model_type = CYCLEGAN
    two_way = True
    required_networks = ("generator_ab", "generator_ba")
    config_rules = common_config_rules((CYCLEGAN,)) | filter_rules("ngf", "ndf") | {
        "gen_blocks": Rule("an integer from 0 to 64", lambda v: integer(v, 0, 64)),
        "norm": Rule("'batch' or 'instance'", lambda v: v in ("batch", "instance")),
        "lsgan": Rule("true or false", lambda v: isinstance(v, bool)),
        **{k: Rule("a number >= 0", lambda v: number(v, low=0))
           for k in ("lambda_A", "lambda_B", "lambda_identity")},
        "identity": Rule("true or false", lambda v: isinstance(v, bool)),
        "pool_size": Rule("an integer >= 0", lambda v: integer(v, 0)),
        "cell_size_b": Rule("null or a list of two numbers > 0",
                            lambda v: v is None or (isinstance(v, list) and len(v) == 2
                                                    and all(number(x) and x > 0 for x in v)),
                            required=False),
    }

    @classmethod
    def build_networks(cls, config: dict) -> dict[str, nn.Module]:
        """``{"generator_ab", "generator_ba", "discriminator_a", "discriminator_b"}``."""
        n_a, n_b = config["n_bands_in"], config["n_bands_out"]
        gen = dict(ngf=config["ngf"], n_blocks=config["gen_blocks"], norm=config["norm"])
        disc = dict(ndf=config["ndf"], norm=config["norm"])
        if config.get("architecture") == "arcgis":  # arcgis.learn's: every network on n_channel bands
            nc = config["n_channel"]
            return {"generator_ab": PadBands(ResnetGenerator(nc, nc, **gen), [n_a], nc, n_b),
                    "generator_ba": PadBands(ResnetGenerator(nc, nc, **gen), [n_b], nc, n_a),
                    "discriminator_a": PadBands(PatchDiscriminator(nc, **disc), [n_a], nc),
                    "discriminator_b": PadBands(PatchDiscriminator(nc, **disc), [n_b], nc)}
        return {"generator_ab": ResnetGenerator(n_a, n_b, **gen), "generator_ba": ResnetGenerator(n_b, n_a, **gen),
                "discriminator_a": PatchDiscriminator(n_a, **disc), "discriminator_b": PatchDiscriminator(n_b, **disc)}

    @classmethod
    def validate_config(cls, config: dict, source) -> None:
        check_arcgis_channels(config, source)

    @classmethod
    def describe_networks(cls, config: dict) -> str:
        return (f"ResNet generators of {config['gen_blocks']} blocks, ngf {config['ngf']}, "
                f"PatchGANs ndf {config['ndf']}")


    @classmethod
    def direction(cls, config: dict, convert_to: str | None) -> tuple[str, bool, str, str, str | None]:
        given = convert_to
        convert_to = "b" if convert_to is None else convert_to.lower() if isinstance(convert_to, str) else convert_to
        if convert_to not in DIRECTIONS:  # arcgis.learn's "A" / "B" too
            raise ValueError(f"convert_to must be 'b' (A -> B) or 'a' (B -> A), got {given!r}.")
        if convert_to == "b":
            return "generator_ab", False, "cell_size", "model (A -> B)", "b"
        return "generator_ba", True, "cell_size_b", "model (B -> A)", "a"


SPECS: dict[str, type[ModelSpec]] = {s.model_type: s for s in (Pix2PixSpec, CycleGANSpec, Pix2PixHDSpec)}


def spec_of(model_type: str) -> type[ModelSpec]:
    """The spec of an ``.emd``'s ModelType; ``KeyError`` when the toolkit has none."""
    return SPECS[model_type]
