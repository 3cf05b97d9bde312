"""The vocabulary of the saved-model checks: a :class:`Rule` per key, the value tests and the
limits (``MAX_CHIP``, ``MAX_BANDS``...), the rules every model config shares, and :func:`fail`,
which raises the one-line ``ValueError`` naming the file, the key path and what was expected.

Layer: formats and I/O (pure Python, no torch). :mod:`toolkit.models.specs` states each model
type's config rules with it; :mod:`toolkit.models.emd_schema` checks whole ``.emd`` files.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

__all__ = ["MAX_BANDS", "MAX_CHIP", "MAX_CLASS_VALUE", "MAX_DEPTH", "MAX_FILTERS", "Rule", "check_arcgis_channels",
           "common_config_rules", "fail", "filter_rules", "integer", "number"]

MAX_DEPTH = 8  # unet_depth never chooses more; deeper nests only risk recursion limits
MAX_CHIP = 8192  # chip side in pixels: an edited .emd saying 100000 would allocate tens of GiB per chip
MAX_BANDS = 1024
MAX_FILTERS = 1024  # ngf / ndf: the paper's 64; 1024 already makes a network of billions of weights
MAX_CLASS_VALUE = 65534  # class rasters are uint8 (nodata 255) or uint16 (nodata 65535); 0 is background


# --- the .emd ----------------------------------------------------------------------------------


class Rule(NamedTuple):
    """One key: what is expected (for the message), a test of the value, whether it must be there."""

    expected: str
    ok: Callable[[Any], bool]
    required: bool = True


def integer(v, low=None, high=None) -> bool:
    # bool is an int in Python, but `"ngf": true` is a mistake, not 1; numpy integers are fine
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and (low is None or v >= low) and \
        (high is None or v <= high)


def number(v, finite=True, low=None) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and \
        (not finite or math.isfinite(v)) and (low is None or v >= low)


def _list_of(test, length=None, min_length=0) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, list) and len(v) >= min_length and \
        (length is None or len(v) == length) and all(test(x) for x in v)


_str = lambda v: isinstance(v, str)  # noqa: E731
_bands = Rule(f"an integer from 1 to {MAX_BANDS}", lambda v: integer(v, 1, MAX_BANDS))
_positive_int = Rule("an integer >= 1", lambda v: integer(v, 1))
_numbers = Rule("a list of finite numbers", _list_of(number))


def common_config_rules(dataset_types: tuple[str, ...]) -> dict[str, Rule]:
    """The ``Toolkit.config`` keys every translation model writes; a model class adds its own
    (``config_rules``)."""
    return {
        "n_bands_in": _bands,
        "n_bands_out": _bands,
        "chip_size": Rule(f"an integer from 1 to {MAX_CHIP} (pixels) or a list of two",
                          lambda v: integer(v, 1, MAX_CHIP) or _list_of(lambda x: integer(x, 1, MAX_CHIP), length=2)(v)),
        "dataset_type": Rule(" or ".join(repr(t) for t in dataset_types), lambda v: v in dataset_types),
        "extract_bands": Rule("null or a list of band indices (integers >= 0)",
                              lambda v: v is None or _list_of(lambda x: integer(x, 0))(v), required=False),
        "cell_size": Rule("null or a list of two numbers > 0",  # inference divides by it
                          lambda v: v is None or _list_of(lambda x: number(x) and x > 0, length=2)(v),
                          required=False),
        # arcgis.learn's network layout (toolkit.models.arcgis_learn), with its channel count
        "architecture": Rule("'toolkit' or 'arcgis'", lambda v: v in ("toolkit", "arcgis"), required=False),
        "n_channel": Rule("an integer from 1 to 1024", lambda v: integer(v, 1, 1024), required=False),
    }


def filter_rules(*names: str) -> dict[str, Rule]:
    """Filter counts of a model's networks (``ngf``, ``ndf``...): integers >= 1; absurd sizes are
    refused by the weights' shapes (``check_weights_fit``), and at construction by
    ``CONSTRUCTION_RULES``."""
    return {name: _positive_int for name in names}


def check_arcgis_channels(config: dict, source) -> None:
    """An ``architecture: "arcgis"`` config needs ``n_channel`` (its networks' band count) to
    hold both sides' bands."""
    if config.get("architecture") != "arcgis":
        return
    need = max(config["n_bands_in"], config["n_bands_out"])
    if not integer(config.get("n_channel"), need):
        fail(source, "Toolkit.config.n_channel", f"an integer >= {need} (the larger side's bands)",
             config.get("n_channel"), missing="n_channel" not in config)


def _show(value) -> str:
    kind = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)
    text = repr(value)
    return f"{text[:60]}... ({kind})" if len(text) > 60 else f"{text} ({kind})"


def fail(source, path: str, expected: str, value=None, missing=False):
    found = "is missing" if missing else f"is {_show(value)}"
    raise ValueError(f"{source}: {path} {found}; expected {expected}.")
