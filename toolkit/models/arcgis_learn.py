"""Models saved by arcgis.learn (2.x): their ``.emd`` and ``.pth`` read as toolkit models.

arcgis.learn saves a Pix2Pix or a CycleGAN as an ``.emd`` of its own keys (no ``Toolkit``
section) beside a ``.pth`` holding one flat state dict of its networks (``G.*`` / ``D.*``;
``G_A.*``, ``G_B.*``, ``D_A.*``, ``D_B.*``). :func:`toolkit_emd` turns such an ``.emd`` into the
toolkit's form and :func:`toolkit_weights` the weights into the toolkit's dict of state dicts,
so :func:`toolkit.models.model_folder.read_model_folder` (and with it ``from_model``,
``load_model``, ``predict_raster``, the raster function) reads an arcgis.learn model as it reads
its own. The model is built with arcgis.learn's network layout (``config["architecture"] =
"arcgis"``: :class:`toolkit.models.networks.ArcGISUNetGenerator`, and for CycleGAN the same ResNet
generators and PatchGANs as the toolkit's, instance norm) and scales bands as arcgis.learn's raster
function does (``BandNorm(scaling="minmax")``: ``[min, max]`` of ``NormalizationStats`` to [-1,
1], not clipped; no statistics: 0..255).

What arcgis.learn means by its keys (2.4.4): ``n_intput_channel`` (sic) is the band count both
networks of a direction take and give (the larger side's; the smaller side's bands are repeated
to fill it), ``n_channel`` the target's bands (CycleGAN: domain B's), ``n_channel_rev`` domain
A's, ``NormalizationStats`` the input's (domain A's) band statistics, ``NormalizationStats_b``
the target's (domain B's). CycleGAN's ``G_B`` makes B from A, ``G_A`` A from B.

Layer: inference core.
"""

from __future__ import annotations

import math
import warnings

__all__ = ["ARCGIS_FRAMEWORK", "arcgis_emd", "arcgis_weights", "is_arcgis_emd", "toolkit_emd", "toolkit_weights"]

ARCGIS_FRAMEWORK = "arcgis.learn.models._inferencing"
SUPPORTED = ("Pix2Pix", "CycleGAN", "Pix2PixHD")
# arcgis.learn's network names -> the toolkit's (CycleGAN's G_B makes B from A), in the order of
# arcgis.learn's state dicts
_NETWORKS = {"Pix2Pix": {"D": "discriminator", "G": "generator"}, "Pix2PixHD": {"D": "discriminator", "G": "generator"},
             "CycleGAN": {"D_A": "discriminator_a", "D_B": "discriminator_b", "G_A": "generator_ba",
                          "G_B": "generator_ab"}}


def is_arcgis_emd(emd) -> bool:
    """Whether a parsed ``.emd`` was written by arcgis.learn (and not by the toolkit)."""
    return isinstance(emd, dict) and "Toolkit" not in emd and emd.get("Framework") == ARCGIS_FRAMEWORK


def _fail(source, detail: str):
    raise ValueError(f"{source}: an arcgis.learn model the toolkit cannot read: {detail}.")


def _stats(emd: dict, key: str, n_default: int, source) -> dict:
    """A ``BandNorm.to_dict`` (scaling ``minmax``) from an arcgis.learn ``NormalizationStats`` entry;
    ``None`` there means 8-bit imagery (arcgis.learn then scales 0..255)."""
    stats = emd.get(key)
    if stats is None:
        mins, maxs = [0.0] * n_default, [255.0] * n_default
        means, stds = [127.5] * n_default, [255.0 / math.sqrt(12)] * n_default
    else:
        if not isinstance(stats, dict):
            _fail(source, f"{key} is not an object")
        try:
            mins, maxs = ([float(v) for v in stats[k]] for k in ("band_min_values", "band_max_values"))
        except (KeyError, TypeError, ValueError):
            _fail(source, f"{key} has no list of numbers band_min_values / band_max_values")
        means = stats.get("band_mean_values") or [(a + b) / 2 for a, b in zip(mins, maxs)]
        stds = stats.get("band_std_values") or [(b - a) / math.sqrt(12) for a, b in zip(mins, maxs)]
        if not mins or len(mins) != len(maxs) or len(means) != len(mins) or len(stds) != len(mins):
            _fail(source, f"{key} lists different numbers of bands")
    return {"kind": "bands", "band_names": [f"Band_{i + 1}" for i in range(len(mins))], "min": mins,
            "max": maxs, "mean": [float(v) for v in means], "std": [float(v) for v in stds],
            "source": f"{source}: {key} (arcgis.learn; scaled min..max, not clipped)", "scaling": "minmax"}


def _number(value):
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def toolkit_emd(emd: dict, source) -> dict:
    """An arcgis.learn ``.emd`` (parsed) -> the same model's ``.emd`` in the toolkit's form: the
    arcgis keys kept, a ``Toolkit`` section added (``imported_from`` says where it came from).
    ``ValueError`` naming ``source`` for a model the toolkit cannot build."""
    model_type = emd.get("ModelType")
    if model_type not in SUPPORTED:
        _fail(source, f"ModelType {model_type!r}; the toolkit reads arcgis.learn's {' and '.join(SUPPORTED)}")
    if emd.get("backbone"):
        _fail(source, f"its generator is a {emd['backbone']} U-Net (backbone=); the toolkit reads arcgis.learn's "
                      "default generators (backbone=None)")
    n_channel = emd.get("n_intput_channel") or emd.get("n_channel")
    if not isinstance(n_channel, int) or n_channel < 1:
        _fail(source, "n_intput_channel / n_channel is not a band count")
    width, height = emd.get("ImageWidth"), emd.get("ImageHeight")
    if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
        _fail(source, "ImageWidth / ImageHeight are not chip sizes in pixels")
    input_norm = _stats(emd, "NormalizationStats", n_channel, source)
    n_out_default = emd.get("n_channel") if isinstance(emd.get("n_channel"), int) else n_channel
    target_norm = _stats(emd, "NormalizationStats_b", n_out_default, source)
    n_in, n_out = len(input_norm["min"]), len(target_norm["min"])
    if max(n_in, n_out) > n_channel:
        _fail(source, f"its statistics list {n_in} and {n_out} bands, more than its networks' {n_channel}")
    extract = emd.get("ExtractBands") or emd.get("extract_bands")
    extract = [int(b) for b in extract] if isinstance(extract, list) else None
    if extract is not None and (len(extract) != n_in or extract == list(range(n_in))):
        extract = None  # all bands in order, or a list arcgis's own raster function ignores too
    cell = _number(emd.get("MinCellSize"))
    params = emd.get("ModelParameters") or {}
    config = {"n_bands_in": n_in, "n_bands_out": n_out,
              "chip_size": width if width == height else [width, height],
              "ngf": 64, "ndf": 64, "norm": "instance", "extract_bands": extract,
              "cell_size": [cell, cell] if cell and cell > 0 else None,
              "architecture": "arcgis", "n_channel": n_channel}
    if model_type == "Pix2PixHD":
        config = {k: v for k, v in config.items() if k not in ("ngf", "ndf")} | _hd_config(emd, source)
    elif model_type == "Pix2Pix":
        config |= {"dataset_type": "Pix2Pix", "backbone": None, "depth": 8, "lambda_l1": 100.0,
                   "gan_weight": 1.0, "class_balance": False,
                   # arcgis.learn's perceptual loss is not the toolkit's VGG one; inference needs neither
                   "perceptual_loss": False, "recipe": "arcgis"}
    else:
        blocks = params.get("gen_blocks", 9)
        config |= {"dataset_type": "CycleGAN", "gen_blocks": int(blocks) if isinstance(blocks, int) else 9,
                   "lsgan": bool(params.get("lsgan", True)), "lambda_A": 10.0, "lambda_B": 10.0,
                   "lambda_identity": 0.5, "identity": n_in == n_out, "pool_size": 50, "cell_size_b": None}
    metrics = {k.lower(): v for k in ("PSNR", "SSIM", "FID", "FID_A", "FID_B")
               if (v := _number(emd.get(k))) is not None}
    version = emd.get("ArcGISLearnVersion", "2.x")
    return dict(emd, Toolkit={"config": config, "input_norm": input_norm, "target_norm": target_norm,
                              "metrics": metrics, "history": [],
                              "imported_from": f"arcgis.learn {version}"})


# arcgis.learn 2.4.4's Pix2PixHD keywords and their defaults (_pix2pix_hd_utils.Pix2PixHDModel)
HD_DEFAULTS = {"n_gen_filters": 64, "gen_network": "local", "n_downsample_global": 4, "n_blocks_global": 9,
               "n_local_enhancers": 1, "n_blocks_local": 3, "norm": "instance", "lsgan": True, "n_dscr_filters": 64,
               "n_layers_dscr": 3, "n_dscr": 2, "feat_loss": True, "vgg_loss": True, "lambda_feat": 10.0,
               "l1_loss": False, "lambda_l1": 100.0}


def _hd_config(emd: dict, source) -> dict:
    """A Pix2PixHD's settings from its ``Kwargs`` (arcgis.learn's defaults for the others; before
    2.0.1 the generator was the global one). Multispectral models trained with L1, not VGG."""
    if emd.get("label_nc"):
        _fail(source, f"a label-to-image Pix2PixHD (label_nc {emd['label_nc']}); the toolkit reads arcgis.learn's "
                      "image-to-image Pix2PixHD models")
    kwargs = emd.get("Kwargs") if isinstance(emd.get("Kwargs"), dict) else {}
    config = dict(HD_DEFAULTS)
    if str(emd.get("ArcGISLearnVersion", "2.4.4")) < "2.0.1":
        config["gen_network"] = "global"
    for key, default in HD_DEFAULTS.items():
        value = kwargs.get(key, config[key])
        if type(value) is not type(default) and not (isinstance(default, float) and isinstance(value, int)):
            _fail(source, f"Kwargs.{key} is {value!r}, not a {type(default).__name__}")
        config[key] = float(value) if isinstance(default, float) else value
    if emd.get("IsMultispectral"):
        config |= {"vgg_loss": False, "l1_loss": True}
    return config | {"dataset_type": "Pix2Pix"}


def toolkit_weights(emd: dict, state, source) -> dict:
    """arcgis.learn's flat state dict (``G.down1.model.0.weight``...; also fastai's ``{"model":
    state_dict, "opt": ...}``) -> the toolkit's ``{"generator": {...}, ...}`` for the model of
    ``emd`` (as :func:`toolkit_emd` gave it). The discriminator of a model trained with
    arcgis.learn's ``perceptual_loss`` (another layout) is left out, with a warning: it only
    matters for training further."""
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        _fail(source, "its weights are not a state dict")
    model_type = emd["ModelType"]
    names = _NETWORKS[model_type]
    out: dict[str, dict] = {name: {} for name in names.values()}
    skipped = []
    for key, tensor in state.items():
        head, _, rest = str(key).partition(".")
        if head not in names:
            _fail(source, f"{key!r} is not a weight of an arcgis.learn {model_type} (expected "
                          f"{', '.join(n + '.*' for n in names)})")
        if model_type == "Pix2Pix" and head == "D" and rest.startswith(("disc_blk", "final")):
            skipped.append(key)
            continue
        if model_type == "CycleGAN":  # the Sequential itself, residual blocks called conv_block
            rest = "model." + rest.replace(".conv_block.", ".block.")
        out[names[head]]["net." + rest] = tensor
    if skipped:
        warnings.warn(f"{source}: the discriminator of arcgis.learn's perceptual loss is not read "
                      "(inference needs only the generator; training further starts a new "
                      "discriminator).", stacklevel=3)
    return {name: sd for name, sd in out.items() if sd}


# --- the other way: a model trained with Pix2Pix(recipe="arcgis"), saved as arcgis.learn saves ---

def arcgis_weights(model_type: str, weights: dict) -> dict:
    """The toolkit's ``{"generator": ..., "discriminator": ...}`` (arcgis.learn's layout, see
    :func:`toolkit_weights`) -> arcgis.learn's flat state dict (``G.down1.model.0.weight``...).
    Anything else in ``weights`` (history, config, optimizer states) stays out: arcgis.learn
    loads the file with ``load_state_dict(strict=True)``."""
    flat = {}
    for head, name in _NETWORKS[model_type].items():
        for key, tensor in (weights.get(name) or {}).items():
            rest = key[len("net."):] if key.startswith("net.") else key
            if model_type == "CycleGAN":
                rest = rest[len("model."):].replace(".block.", ".conv_block.")
            flat[f"{head}.{rest}"] = tensor
    return flat


def _arcgis_stats(norm: dict) -> dict:
    return {"band_min_values": norm["min"], "band_max_values": norm["max"], "band_mean_values": norm["mean"],
            "band_std_values": norm["std"], "scaled_min_values": None, "scaled_max_values": None,
            "scaled_mean_values": None, "scaled_std_values": None}


def arcgis_emd(emd: dict, name: str, save_inference_file: bool = True) -> dict:
    """A toolkit ``.emd`` of an ``architecture: "arcgis"`` Pix2Pix -> the ``.emd`` arcgis.learn
    2.4.4's ``Pix2Pix.save`` writes (its keys, its meanings), with the toolkit's own section kept
    (``Toolkit``, which arcgis.learn ignores; its ``weights_format`` tells the toolkit that the
    ``.pth`` holds arcgis.learn's tensor names). ``save_inference_file=False`` names Pro's
    built-in function, as arcgis.learn does."""
    toolkit = emd["Toolkit"]
    c = toolkit["config"]
    bands = list(range(c["n_bands_in"]))
    extract = c.get("extract_bands") or bands
    cell = c.get("cell_size")
    metrics = toolkit.get("metrics") or {}
    out = {
        "Framework": ARCGIS_FRAMEWORK, "ModelConfiguration": "_pix2pix", "perceptual_loss": False, "backbone": None,
        "InferenceFunction": "ArcGISImageTranslation.py" if save_inference_file else
        "[Functions]System\\DeepLearning\\ArcGISLearn\\ArcGISImageTranslation.py",
        "ModelType": "Pix2Pix", "n_intput_channel": c["n_channel"],
        "NormalizationStats_b": _arcgis_stats(toolkit["target_norm"]), "n_channel": c["n_bands_out"],
        "extract_bands": extract, "bands": ["o"] * len(extract), "ModelFormat": "NCHW",
        "MinCellSize": cell[0] if cell else None, "MaxCellSize": cell[0] if cell else None,
        "SupportsVariableTileSize": False, "ArcGISLearnVersion": "2.4.4", "ModelFile": f"{name}.pth",
        "ImageHeight": emd["ImageHeight"], "ImageWidth": emd["ImageWidth"],
        "LearningRate": str(toolkit["history"][-1].get("lr")) if toolkit.get("history") else "None",
        "ModelName": "Pix2Pix", "backend": "pytorch", "ModelParameters": {"backbone": None, "backend": "pytorch"},
        "PSNR": f"{metrics['psnr']:1.4e}" if "psnr" in metrics else "None",
        "SSIM": f"{metrics['ssim']:1.4e}" if "ssim" in metrics else "None",
        "resize_to": None, "IsMultispectral": True, "IsImageNetNormalization": True,
        "Bands": ["o"] * len(extract), "ImageryType": "ms", "ExtractBands": extract,
        "NormalizationStats": _arcgis_stats(toolkit["input_norm"]), "DoNormalize": False,
    }
    out["Toolkit"] = dict(toolkit, weights_format="arcgis.learn")
    return out
