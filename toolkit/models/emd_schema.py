"""What a saved model must hold before the toolkit builds anything from it.

Two checks, both raising ``ValueError`` that names the file:

* :func:`validate_emd`: the ``.emd`` against the keys the toolkit writes and reads back
  (``TranslationModel._emd``, the ``config_rules`` of the ``.emd``'s ``ModelType`` for its
  ``Toolkit.config`` (:mod:`toolkit.models.specs`), ``BandNorm.to_dict`` /
  ``MaskEncoding.to_dict``). Errors give the key path and what was expected::

      model.emd: Toolkit.config.ngf is '8' (a string); expected an integer >= 1.

  arcgis.learn's own keys (``ImageHeight``, ``NormalizationStats``...) are written for ArcGIS
  and never read back, so they are not checked; unknown keys are allowed. (An ``.emd`` that
  arcgis.learn wrote is first turned into the toolkit's form, :mod:`toolkit.models.arcgis_learn`.)
* :func:`check_weights_fit`: the networks the config describes, built on torch's ``meta``
  device (shapes only, no memory), against every tensor of the weights file; so an ``.emd``
  saying ``ngf=100000`` is refused in milliseconds instead of allocating terabytes.

Layer: inference core (above :mod:`toolkit.models.specs`, whose networks it builds on the meta
device; the rules' vocabulary is :mod:`toolkit.models.rules`).
"""

from __future__ import annotations

import torch
from torch import nn

from toolkit.models.rules import (MAX_BANDS, MAX_CHIP, MAX_CLASS_VALUE, MAX_DEPTH, MAX_FILTERS, Rule,  # noqa: F401
                                  _list_of, _numbers, _str, check_arcgis_channels, common_config_rules, fail,
                                  integer, number)
from toolkit.models.specs import SPECS, spec_of

__all__ = ["Rule", "check_state_fits", "check_weights_fit", "common_config_rules", "fail", "integer",
           "number", "validate_emd"]

BANDS = {  # BandNorm.to_dict; low/high are derived again on reading
    "kind": Rule("'bands'", lambda v: v == "bands"),
    "band_names": Rule("a list of strings", _list_of(_str)),
    "min": _numbers, "max": _numbers, "mean": _numbers, "std": _numbers,
    "source": Rule("a string", _str),
    "scaling": Rule("'sigma' or 'minmax'", lambda v: v in ("sigma", "minmax"), required=False),
}
CLASS = {"Value": Rule(f"an integer from 1 to {MAX_CLASS_VALUE} (0 is the background; the class raster's "
                       "nodata is 255, or 65535 when 255 is a class)", lambda v: integer(v, 1, MAX_CLASS_VALUE)),
         "Name": Rule("a string", _str, required=False)}
CLASSES = {  # MaskEncoding.to_dict
    "kind": Rule("'classes'", lambda v: v == "classes"),
    "classes": Rule("a list of at least one class object", _list_of(lambda c: isinstance(c, dict), min_length=1)),
}
RECORD = {"epoch": Rule("an integer >= 0", lambda v: integer(v, 0))}  # one History record
TOOLKIT = {  # "config" is checked against the model class's config_rules
    "version": Rule("a string", _str, required=False),
    "input_norm": Rule("an object with kind 'bands' or 'classes' (label-to-image)",
                       lambda v: isinstance(v, dict) and v.get("kind") in ("bands", "classes")),
    "target_norm": Rule("an object with kind 'bands' or 'classes'",
                        lambda v: isinstance(v, dict) and v.get("kind") in ("bands", "classes")),
    "history": Rule("a list of objects", _list_of(lambda r: isinstance(r, dict)), required=False),
    "footprint_settings": Rule("null or an object of numbers (threshold, boundary_threshold, min_area, marker_erosion)",
                               lambda v: v is None or (isinstance(v, dict) and all(number(x) for x in v.values())),
                               required=False),
    "metrics": Rule("an object of numbers",
                    lambda v: isinstance(v, dict) and all(number(x, finite=False) for x in v.values()),
                    required=False),
}
EMD = {
    "ModelFile": Rule("a file name", _str, required=False),
    "Toolkit": TOOLKIT,
}


def _check(obj, spec: dict, path: str, source) -> None:
    """Check the object ``obj`` at key path ``path`` against ``spec``: key -> Rule or nested spec."""
    if not isinstance(obj, dict):
        fail(source, path or "the .emd", "an object" if path else "a JSON object", obj)
    for key, rule in spec.items():
        where = f"{path}.{key}" if path else key
        if isinstance(rule, dict):  # a nested object, always required
            if key not in obj:
                fail(source, where, "an object", missing=True)
            _check(obj[key], rule, where, source)
        elif key not in obj:
            if rule.required:
                fail(source, where, rule.expected, missing=True)
        elif not rule.ok(obj[key]):
            fail(source, where, rule.expected, obj[key])


def validate_emd(emd, source) -> None:
    """Raise ``ValueError`` naming ``source`` and the key path unless ``emd`` (the parsed JSON) is
    an ``.emd`` of a model the toolkit knows (its ``ModelType``) whose toolkit keys the loader
    can use; return nothing otherwise."""
    if not isinstance(emd, dict):
        fail(source, "the .emd", "a JSON object", emd)
    known = " or ".join(repr(t) for t in SPECS)
    model_type = emd.get("ModelType")
    cls = SPECS.get(model_type) if isinstance(model_type, str) else None
    if cls is None:
        fail(source, "ModelType", f"{known} (a model saved by this toolkit)", model_type,
             missing="ModelType" not in emd)
    _check(emd, EMD, "", source)
    toolkit = emd["Toolkit"]
    if "config" not in toolkit:
        fail(source, "Toolkit.config", "an object", missing=True)
    _check(toolkit["config"], cls.config_rules, "Toolkit.config", source)
    config, target, source_norm = toolkit["config"], toolkit["target_norm"], toolkit["input_norm"]
    cls.validate_config(config, source)
    for name, norm in (("input_norm", source_norm), ("target_norm", target)):
        _check(norm, BANDS if norm["kind"] == "bands" else CLASSES, f"Toolkit.{name}", source)
        check_classes(norm.get("classes", []), source, f"Toolkit.{name}.classes")
    _check_image_size(emd, config, source)
    for i, record in enumerate(toolkit.get("history", [])):
        _check(record, RECORD, f"Toolkit.history[{i}]", source)
    # band counts must agree, or normalisation fails (or broadcasts silently) at predict time
    if source_norm["kind"] == "bands":
        counts = [(f"Toolkit.input_norm.{k}", len(source_norm[k]), "n_bands_in")
                  for k in ("min", "max", "mean", "std", "band_names")]
    else:  # label-to-image: one input band per class
        counts = [("Toolkit.input_norm.classes", len(source_norm["classes"]), "n_bands_in")]
    if target["kind"] == "bands":
        counts += [(f"Toolkit.target_norm.{k}", len(target[k]), "n_bands_out")
                   for k in ("min", "max", "mean", "std", "band_names")]
    else:
        counts.append(("Toolkit.target_norm.classes", len(target["classes"]), "n_bands_out"))
    if config.get("extract_bands") and source_norm["kind"] == "bands":
        counts.append(("Toolkit.config.extract_bands", len(config["extract_bands"]), "n_bands_in"))
    for path, n, key in counts:
        if n != config[key]:
            raise ValueError(f"{source}: {path} lists {n} band(s); expected Toolkit.config.{key} "
                             f"({config[key]}).")


def check_classes(classes: list, source, path: str = "classes") -> None:
    """Each class an object with an integer ``Value`` in 1..:data:`MAX_CLASS_VALUE`, the values
    unique (two classes of one value would merge in the class raster)."""
    for i, c in enumerate(classes):
        _check(c, CLASS, f"{path}[{i}]", source)
    values = [c["Value"] for c in classes]
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"{source}: {path} give the value(s) {repeated} to more than one class; each "
                         "class needs its own value.")


def _check_image_size(emd: dict, config: dict, source) -> None:
    """ArcGIS reads the chip size from ``ImageWidth``/``ImageHeight``, the toolkit from its
    config: where both are written they must agree (and be pixel counts in range)."""
    width, height = emd.get("ImageWidth"), emd.get("ImageHeight")
    if width is None and height is None:
        return
    for key, value in (("ImageWidth", width), ("ImageHeight", height)):
        if not integer(value, 1, MAX_CHIP):
            fail(source, key, f"an integer from 1 to {MAX_CHIP} (the chip size in pixels)", value,
                 missing=value is None)
    size = config["chip_size"]
    expected = tuple(size) if isinstance(size, list) else (size, size)
    if (width, height) != expected:
        raise ValueError(f"{source}: ImageWidth x ImageHeight is {width}x{height}, but "
                         f"Toolkit.config.chip_size is {expected[0]}x{expected[1]}; the model was "
                         "trained on one chip size: put back the size it was saved with.")


CONSTRUCTION_RULES = {  # a new model has no weights to check its sizes against
    "ngf": Rule(f"an integer from 1 to {MAX_FILTERS}", lambda v: integer(v, 1, MAX_FILTERS)),
    "ndf": Rule(f"an integer from 1 to {MAX_FILTERS}", lambda v: integer(v, 1, MAX_FILTERS)),
    "n_gen_filters": Rule(f"an integer from 1 to {MAX_FILTERS}", lambda v: integer(v, 1, MAX_FILTERS)),
    "n_dscr_filters": Rule(f"an integer from 1 to {MAX_FILTERS}", lambda v: integer(v, 1, MAX_FILTERS)),
}


def check_config(config: dict, rules: dict, source: str) -> None:
    """A new model's settings against its ``config_rules`` (and :data:`CONSTRUCTION_RULES`), with
    the messages of loading (``ValueError``: ``Pix2Pix: ngf is 0 (an integer); expected an
    integer from 1 to 1024.``)."""
    _check(config, rules | {k: r for k, r in CONSTRUCTION_RULES.items() if k in rules}, "", source)


# --- the weights against the config ------------------------------------------------------------


def check_state_fits(networks: dict[str, nn.Module], state, source, network: str, *,
                     required: tuple[str, ...] = ("generator",)) -> None:
    """Raise ``ValueError`` naming ``source`` and the first tensor of ``state`` (a weights dict:
    ``{"generator": state_dict, "discriminator": state_dict, ...}``) that is missing, extra or
    of another shape than in ``networks`` (name -> module, e.g. built on the meta device).

    The ``required`` networks (the generators) must be in ``state``; the others are checked
    where present, as ``TranslationModel._load_weights`` loads them. ``network`` describes the
    networks for the message.
    """
    def fail(detail: str):
        raise ValueError(f"{source}: the weights do not fit {network}: {detail}.")

    if not isinstance(state, dict):
        fail("they are not a dict of state dicts")
    for name in required:
        if name not in state:
            fail(f"they hold no {name} weights")
    for name, net in networks.items():
        if name not in state:
            continue
        found = state[name]
        if not isinstance(found, dict):
            fail(f"{name} is a {type(found).__name__}, not a state dict")
        expected = net.state_dict()
        for key, tensor in expected.items():
            if key not in found:
                fail(f"{name}.{key} is missing (expected shape {tuple(tensor.shape)})")
            if not torch.is_tensor(found[key]):
                fail(f"{name}.{key} is a {type(found[key]).__name__}, not a tensor")
            if found[key].shape != tensor.shape:
                fail(f"{name}.{key}: expected shape {tuple(tensor.shape)}, found {tuple(found[key].shape)}")
        extra = [k for k in found if k not in expected]
        if extra:
            fail(f"{name}.{extra[0]} is not a tensor of this network"
                 + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))


def check_weights_fit(config: dict, weights, source, model_type: str = "Pix2Pix") -> None:
    """Raise ``ValueError`` naming ``source`` unless ``weights`` fit the networks of ``config``
    (a validated ``Toolkit.config`` of a ``model_type`` model), tensor by tensor; the networks
    are built on the meta device, so this costs no memory and runs before anything real is built."""
    cls = spec_of(model_type)
    with torch.device("meta"):
        networks = cls.build_networks(config)
    check_state_fits(networks, weights, source,
                     f"the networks of the .emd's config ({cls.describe_networks(config)})",
                     required=cls.required_networks)
