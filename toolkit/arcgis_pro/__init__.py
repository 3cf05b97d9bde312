"""Running saved models in ArcGIS Pro.

A model saved by the toolkit (``save()``) carries, beside its ``.emd`` and in its ``.dlpk``, the
Python raster function :data:`INFERENCE_FUNCTION` (``ArcGISImageTranslation.py``, this package's
copy is :func:`inference_function_path`). ArcGIS Pro's "Classify Pixels Using Deep Learning"
tool reads the ``.emd``, loads the file its ``InferenceFunction`` names and drives the class of
the file's name through Esri's raster function interface (``initialize``, ``getParameterInfo``,
``getConfiguration``, ``updateRasterInfo``, ``updatePixels``). The function loads the weights
with the toolkit, which must be installed (with pip) into a clone of Pro's Python environment:
see the README, "Running a saved model in ArcGIS Pro".

Layer: formats, I/O and runtime.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["INFERENCE_FUNCTION", "inference_function_path"]

INFERENCE_FUNCTION = "ArcGISImageTranslation.py"
"""The raster function's file name: the ``.emd``'s ``InferenceFunction`` (the class has the
file's name, as ArcGIS requires)."""


def inference_function_path() -> Path:
    """The raster function file shipped with the package (``save()`` copies it into the model)."""
    return Path(__file__).with_name(INFERENCE_FUNCTION)
