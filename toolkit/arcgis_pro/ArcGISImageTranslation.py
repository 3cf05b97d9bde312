"""ArcGIS Pro Python raster function for image-translation models saved by the toolkit.

``save()`` writes this file beside the model's ``.emd`` (and into its ``.dlpk``); the ``.emd``'s
``InferenceFunction`` names it. ArcGIS Pro ("Classify Pixels Using Deep Learning") unpacks the
package, loads this file by its path and drives the class of the file's name, in this order:

1. ``initialize(model=<.emd path or its JSON text>, device=<GPU id; -1: the CPU>)``: loads
   the model with the toolkit (``toolkit.models.load_translation``, which needs no fastai), which
   must be installed in Pro's (cloned) Python environment;
2. ``getParameterInfo()``: ``raster``, ``model``, ``device``, then the model's own arguments:
   ``padding``, ``batch_size`` (4), ``test_time_augmentation``, ``threshold`` (mask models),
   ``direction`` (CycleGAN: ``"AtoB"`` translates domain A to B, ``"BtoA"`` B to A, as Esri's
   function) and ``tile_size`` (models whose ``.emd`` says SupportsVariableTileSize);
3. ``getConfiguration(**scalars)``: the bands to read, the padding and the tile size ``tx`` x
   ``ty`` without padding (``batch_size`` chips of the model's size per block);
4. ``updateRasterInfo(**kwargs)``: the output's band count and pixel type, and for mask models
   the classes as a raster attribute table;
5. ``updatePixels(tlc, shape, props, **pixelBlocks)`` per block: ``raster_pixels`` is
   ``(bands, ty + 2 padding, tx + 2 padding)`` in the raster's own values; each chip of the
   model's size in it goes through the toolkit's own inference (the model's normalisation, the
   generator, target units: :meth:`toolkit.models.Translation.predict_chips`); overlapping chips
   are blended with a Hann window and the padding cropped, as Esri's image-translation functions
   do. ``output_pixels`` is ``(bands, ty, tx)`` in target units: band values (float32) for image
   models, class values for mask models (the highest class score where it is at least
   ``threshold``, else 0, the rule of ``predict_raster(threshold=...)``); ``output_mask`` is 0
   where the input is nodata.

Models saved by arcgis.learn load here too (``toolkit.models.arcgis_learn``), so this function
runs them as Esri's ``ArcGISImageTranslation.py`` does.

The interface follows Esri's raster-deep-learning repository
(``docs/writing_deep_learning_python_raster_functions.md``,
``python_raster_functions/ImageClassifier.py``, ``Templates/TemplateBaseClassifier.py``,
``prf_utils.py``, ``attribute_table.py``) and the raster-functions wiki ("Anatomy of a Python
Raster Function"). This file only needs numpy and the toolkit.

Layer: front doors.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = ["ArcGISImageTranslation"]

# Esri's raster attribute table for class rasters (raster-deep-learning attribute_table.py).
_ATTRIBUTE_FIELDS = [("OID", "esriFieldTypeOID"), ("Value", "esriFieldTypeInteger"),
                     ("Class", "esriFieldTypeString"), ("Red", "esriFieldTypeInteger"),
                     ("Green", "esriFieldTypeInteger"), ("Blue", "esriFieldTypeInteger")]

# getConfiguration's inheritProperties bits (raster-functions wiki): 1 pixel type, 2 NoData,
# 4 dimensions (extent, cell size, spatial reference), 8 resampling type. The output's pixel
# type is this function's, and its nodata is given per block by output_mask.
_INHERIT_DIMENSIONS_AND_RESAMPLING = 4 | 8

DEFAULT_BATCH_SIZE = 4  # chips per block, as Esri's image-translation functions
DIRECTIONS = {"AtoB": "b", "BtoA": "a"}  # Esri's direction -> Translation's convert_to

_INSTALL_HINT = ("Install the toolkit into ArcGIS Pro's cloned Python environment with pip (see the "
                 "toolkit's README, 'Running a saved model in ArcGIS Pro').")


def _integer(value, name: str) -> int:
    """A numeric argument as Pro passes it (a number or its text) -> int."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}.") from None
    if not math.isfinite(number) or number != int(number):
        raise ValueError(f"{name} must be a whole number, got {value!r}.")
    return int(number)


def _flag(value) -> bool:
    """A boolean argument as Pro passes it (a bool, a number or text such as "True")."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("true", "1", "yes"):
            return True
        if text in ("false", "0", "no", ""):
            return False
        raise ValueError(f"expected True or False, got {value!r}.")
    return bool(value)


def _rectangle(batch_size: int) -> tuple[int, int]:
    """Chips per block as ``(rows, columns)``, as Esri's ``prf_utils.
    calculate_rectangle_size_from_batch_size`` lays them out (a wide rectangle, else a column)."""
    rows = int(math.sqrt(batch_size) + 0.5)
    cols = int(batch_size / rows)
    if rows * cols > batch_size:
        if rows >= cols:
            rows -= 1
        else:
            cols -= 1
    if (rows + 1) * cols <= batch_size:
        rows += 1
    if (cols + 1) * rows <= batch_size:
        cols += 1
    if rows > cols:
        rows, cols = cols, rows
    return (rows, cols) if rows * cols == batch_size else (batch_size, 1)


def _starts(inner: int, step: int) -> list[int]:
    """Offsets of the chips (each ``step`` unpadded pixels) that cover ``inner`` pixels: every
    ``step``, the last one moved back to end at ``inner`` when ``step`` does not divide it."""
    starts = list(range(0, inner - step + 1, step))
    if not starts or starts[-1] + step < inner:
        starts.append(inner - step)
    return starts


def _convert_to(scalars: dict) -> str:
    """A CycleGAN's direction as ``Translation``'s ``convert_to``: Esri's ``direction``
    (``"AtoB"`` / ``"BtoA"``; missing: ``"BtoA"``, as Esri's function), or the toolkit's earlier
    ``convert_to`` (``"b"`` / ``"a"``)."""
    direction = scalars.get("direction")
    if direction in (None, "") and scalars.get("convert_to") not in (None, ""):
        convert_to = str(scalars["convert_to"]).strip().lower()
        if convert_to not in ("a", "b"):
            raise ValueError(f"convert_to must be 'b' or 'a', got {scalars['convert_to']!r}.")
        return convert_to
    key = str(direction or "BtoA").strip().lower()
    if key not in {d.lower() for d in DIRECTIONS}:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}.")
    return DIRECTIONS[key.replace("atob", "AtoB").replace("btoa", "BtoA")]


@lru_cache(maxsize=8)
def _blend_window(height: int, width: int) -> np.ndarray:
    """The 2-D blending window of a chip, made once per chip size (not per block)."""
    return np.outer(_periodic_hann(height), _periodic_hann(width)) + 1e-12


def _periodic_hann(n: int) -> np.ndarray:
    """``torch.hann_window(n)``: ``sin(pi k / n) ** 2`` for k = 0..n-1 (0 at the first sample)."""
    return np.sin(np.pi * np.arange(n) / n) ** 2


def _read_emd(model) -> tuple[dict, Path]:
    """``(emd, emd_path)`` from ``initialize``'s ``model``: the ``.emd``'s path, or its JSON text
    (then the ``.emd`` is looked up where its ``ModelFile`` lies: an absolute path's folder, or
    this file's folder, where Pro unpacked the package)."""
    text = str(model)
    try:
        is_file = Path(text).is_file()
    except (OSError, ValueError):  # JSON text is no file name (too long, odd characters)
        is_file = False
    if is_file:
        path = Path(text).resolve()
        return json.loads(path.read_text(encoding="utf-8")), path
    try:
        emd = json.loads(text)
    except ValueError:
        raise ValueError(f"model must be an .emd file or its JSON text; got {text[:200]!r}.") from None
    if not isinstance(emd, dict) or "ModelFile" not in emd:
        raise ValueError("model: the .emd JSON has no ModelFile.")
    weights = Path(emd["ModelFile"])
    folder = weights.parent if weights.is_absolute() else Path(__file__).resolve().parent
    path = folder / f"{weights.stem}.emd"
    if not path.is_file():
        emds = sorted(folder.glob("*.emd"))
        if len(emds) != 1:
            raise FileNotFoundError(f"{folder}: cannot find the .emd of ModelFile {emd['ModelFile']!r} "
                                    "beside it; pass the .emd's path as model.")
        path = emds[0]
    return emd, path


def _torch_device(device):
    """The torch device for Pro's ``device``: ``None`` (Pro validating the tool) and -1: the
    CPU; a GPU id >= 0: that GPU; below -1: the first GPU (Esri's "pick one"). A GPU that this
    torch cannot use gives the CPU, with a warning."""
    import torch

    if device is None:
        return torch.device("cpu")
    device = _integer(device, "device")
    if device == -1:
        return torch.device("cpu")
    index = 0 if device < -1 else device
    if torch.cuda.is_available() and index < torch.cuda.device_count():
        return torch.device("cuda", index)
    warnings.warn(f"device {device}: no such CUDA GPU for this PyTorch ({torch.__version__}, CUDA "
                  f"{'available' if torch.cuda.is_available() else 'not available'}); running on the CPU.",
                  RuntimeWarning, stacklevel=3)
    return torch.device("cpu")


class ArcGISImageTranslation:
    """The Python raster function ArcGIS Pro runs for a Pix2Pix or CycleGAN model of the toolkit
    (see the module docstring for the calls and their order)."""

    def __init__(self) -> None:
        self.name = "Image Translation"
        self.description = ("Translates imagery with a Pix2Pix or CycleGAN model trained with the open "
                            "geospatial toolkit: image to image, or image to class mask.")
        self.json_info: dict | None = None
        self.emd_path: Path | None = None
        self._two_way = False
        self.device = None
        self.translation = None
        self.extract_bands: list[int] = []
        self.padding = 0
        self.tx = self.ty = 0
        self.tta = False
        self.threshold = 0.5
        self.tile_size = 0  # 0: the model's chip size

    # --- 1. the model ---------------------------------------------------------------------------

    def initialize(self, **kwargs) -> None:
        """Read the ``.emd`` (``kwargs['model']``: its path or JSON text) and load the model with
        the toolkit onto ``kwargs['device']`` (a GPU id, -1 for the CPU)."""
        if "model" not in kwargs:
            return
        self.json_info, self.emd_path = _read_emd(kwargs["model"])
        try:  # inference alone: torch, numpy, rasterio; no fastai (Pro's arcgis.learn has fastai 1)
            from toolkit.models.specs import spec_of
            from toolkit.models.translation import load_translation
        except ImportError as err:
            raise ImportError(f"{self.emd_path}: this model needs the Python package 'toolkit', which "
                              f"this Python environment lacks ({err}). {_INSTALL_HINT}") from err
        self.device = _torch_device(kwargs.get("device"))
        self._load = load_translation
        self._two_way = spec_of(self.json_info.get("ModelType")).two_way
        self._directions = {}
        self.translation = self._translation("b")

    def _translation(self, convert_to: str):
        """One direction of the model (loaded once), taking the bands Pro extracts (all of the block)."""
        if convert_to not in self._directions:
            from toolkit.models.backends import accelerate

            t = self._load(self.emd_path, convert_to if self._two_way else None, device=self.device)
            self._directions[convert_to] = accelerate(t)  # the fastest exact path (OpenVINO, ONNX Runtime...)
        t = self._directions[convert_to]
        self.extract_bands = list(t.extract_bands) if t.extract_bands else list(range(t.n_bands_in))
        return replace(t, extract_bands=None)  # Pro delivers only the extractBands

    @property
    def _chip(self) -> tuple[int, int]:
        """The chip as ``(height, width)``: the ``.emd``'s ImageHeight, ImageWidth, or the
        ``tile_size`` asked for (models whose ``.emd`` says SupportsVariableTileSize)."""
        if self.tile_size:
            return self.tile_size, self.tile_size
        width, height = self.translation.chip_size
        return height, width

    @property
    def _variable_tiles(self) -> bool:
        return bool((self.json_info or {}).get("SupportsVariableTileSize"))

    def _default_padding(self) -> int:
        from toolkit.inference import check_settings

        return check_settings(self.translation, None, None)  # predict_raster's: a quarter chip

    # --- 2. the arguments -----------------------------------------------------------------------

    def getParameterInfo(self) -> list[dict]:
        """The tool's arguments: ``raster``, ``model`` and ``device`` (as Esri's classifiers),
        then this model's, each with its default ``value`` (only the first three before
        ``initialize`` has loaded a model)."""
        params = [
            {"name": "raster", "dataType": "raster", "required": True, "displayName": "Raster",
             "description": "Input Raster"},
            {"name": "model", "dataType": "string", "required": True,
             "displayName": "Input Model Definition (EMD) File",
             "description": "Input model definition (EMD) JSON file"},
            {"name": "device", "dataType": "numeric", "required": False, "displayName": "Device ID",
             "description": "Device ID"},
        ]
        if self.translation is None:
            return params
        params += [
            {"name": "padding", "dataType": "numeric", "value": self._default_padding(), "required": False,
             "displayName": "Padding",
             "description": "Pixels on each side of a chip that are predicted but not kept (the chips "
                            "overlap by twice this); at most half the chip size less one."},
            {"name": "batch_size", "dataType": "numeric", "value": DEFAULT_BATCH_SIZE, "required": False,
             "displayName": "Batch Size", "description": "Chips of the model's size per block."},
            {"name": "test_time_augmentation", "dataType": "boolean", "value": False, "required": False,
             "displayName": "Test Time Augmentation",
             "description": "Average each chip's outputs over its flips and 90-degree rotations "
                            "(8 times the work)."},
        ]
        if self.translation.is_mask:
            params.append({"name": "threshold", "dataType": "numeric", "value": 0.5, "required": False,
                           "displayName": "Threshold",
                           "description": "A pixel takes the class of its highest score where that score "
                                          "is at least this (0 to 1), else 0 (background)."})
        if self._two_way:
            params.append({"name": "direction", "dataType": "string", "value": "AtoB", "required": True,
                           "domain": tuple(DIRECTIONS), "displayName": "Direction",
                           "description": "AtoB: the raster is of domain A, translate it to B; "
                                          "BtoA: the raster is of domain B, translate it to A."})
        if self._variable_tiles:
            height, _ = self._chip
            params.append({"name": "tile_size", "dataType": "numeric", "value": height, "required": False,
                           "displayName": "Tile Size",
                           "description": "The width and height of the chips the raster is cut into."})
        return params

    # --- 3. how Pro reads the input -----------------------------------------------------------

    def getConfiguration(self, **scalars) -> dict:
        """Keep the arguments; return the bands to extract, the padding and the tile size ``tx``
        x ``ty`` without padding (``batch_size`` chips laid out as Esri's templates do)."""
        from toolkit.inference import check_settings

        if self._two_way:
            self.translation = self._translation(_convert_to(scalars))
        tile_size = scalars.get("tile_size")
        if self._variable_tiles and tile_size not in (None, ""):
            self.tile_size = _integer(tile_size, "tile_size")
            if self.tile_size < 8:
                raise ValueError(f"tile_size must be at least 8 px, got {tile_size!r}.")
        self.tta = _flag(scalars.get("test_time_augmentation", False))
        padding = scalars.get("padding")
        padding = self._default_padding() if padding in (None, "") else _integer(padding, "padding")
        if self.translation.is_mask:
            threshold = scalars.get("threshold")
            self.threshold = 0.5 if threshold in (None, "") else float(threshold)
            if not 0.0 <= self.threshold <= 1.0:
                raise ValueError(f"threshold must lie in 0..1, got {threshold!r}.")
        self.padding = check_settings(self.translation, padding, None)
        batch_size = scalars.get("batch_size")
        batch_size = DEFAULT_BATCH_SIZE if batch_size in (None, "") else _integer(batch_size, "batch_size")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        rows, cols = _rectangle(batch_size)
        height, width = self._chip
        self.ty, self.tx = (height - 2 * self.padding) * rows, (width - 2 * self.padding) * cols
        return {"extractBands": tuple(self.extract_bands), "padding": self.padding, "tx": self.tx,
                "ty": self.ty, "fixedTileSize": 1,
                "inheritProperties": _INHERIT_DIMENSIONS_AND_RESAMPLING, "inputMask": True}

    # --- 4. the output raster -----------------------------------------------------------------

    def updateRasterInfo(self, **kwargs) -> dict:
        """The output's band count and pixel type: one band of class values (``u1``, or a wider
        integer type for values above 255) with the classes as a raster attribute table for
        mask models; the target's bands as float32 (``f4``) for image models."""
        info = kwargs["output_info"]
        if self.translation.is_mask:
            top = max(self.translation.target_norm.values)
            info["bandCount"] = 1
            info["pixelType"] = "u1" if top <= 255 else "u2" if top <= 65535 else "i4"
            info["rasterAttributeTable"] = json.dumps(self._attribute_table())
        else:
            info["bandCount"] = self.translation.n_bands_out
            info["pixelType"] = "f4"
        info["statistics"] = ()  # the input's do not describe the output
        info["histogram"] = ()
        return kwargs

    def _attribute_table(self) -> dict:
        """Esri's raster attribute table of the classes: the ``.emd``'s ``Classes`` (names and
        colours as Pro shows them), in the model's class order."""
        in_emd = {int(c["Value"]): c for c in (self.json_info or {}).get("Classes") or []}
        features = []
        for i, record in enumerate(self.translation.target_norm.classes):
            c = in_emd.get(int(record["Value"]), record)
            color = list(c.get("Color") or [0, 0, 0])[:3]
            features.append({"attributes": {"OID": i + 1, "Value": int(c["Value"]),
                                            "Class": str(c.get("Name", c["Value"])),
                                            "Red": int(color[0]), "Green": int(color[1]),
                                            "Blue": int(color[2])}})
        return {"displayFieldName": "", "fieldAliases": {name: name for name, _ in _ATTRIBUTE_FIELDS},
                "fields": [{"name": n, "type": t, "alias": n} for n, t in _ATTRIBUTE_FIELDS],
                "features": features}

    # --- 5. the pixels ------------------------------------------------------------------------

    def updatePixels(self, tlc, shape, props: dict, **pixelBlocks) -> dict:
        """Translate one padded block: ``pixelBlocks['raster_pixels']`` ``(bands, rows, cols)``
        in the raster's values (``raster_mask``: 0 where nodata) -> ``output_pixels``
        ``(bands_out, rows - 2 padding, cols - 2 padding)`` cast to ``props['pixelType']``, and
        ``output_mask`` (0 where every input band is nodata)."""
        pixels = np.asarray(pixelBlocks["raster_pixels"])
        if pixels.ndim == 2:
            pixels = pixels[np.newaxis]
        data = pixels
        mask = pixelBlocks.get("raster_mask")
        if mask is not None:
            valid = np.asarray(mask) != 0
            if valid.ndim == 3:
                valid = valid.all(axis=0)  # a pixel is data where every band is
            if not valid.all():  # nodata becomes NaN: what the toolkit's predict leaves out
                data = pixels.astype(np.result_type(pixels.dtype, np.float32))
                data[:, ~valid] = np.nan
        values = self._translate(data)
        nodata = np.isnan(values).all(axis=0)
        if self.translation.is_mask:
            out = self._classes(values)[np.newaxis]
        else:
            out = np.where(np.isnan(values), np.float32(0), values)
        out[:, nodata] = 0
        pixelBlocks["output_pixels"] = out.astype(props["pixelType"], copy=False)
        pixelBlocks["output_mask"] = np.repeat((~nodata)[np.newaxis], out.shape[0], axis=0).astype(np.uint8)
        return pixelBlocks

    def _translate(self, data: np.ndarray) -> np.ndarray:
        """The block's inner part in target units, float32 ``(bands_out, rows - 2p, cols - 2p)``,
        NaN where the input is nodata: the chips of the model's size that cover the block (every
        ``chip - 2 padding`` pixels), each through the toolkit's ``predict`` in one batch, blended
        where they overlap with a 2-D Hann window, the padding cropped: Esri's image-translation
        functions (arcgis.learn 2.4.4, ``update_pixels_img_trans``) do the same, with the same
        window (``torch.hann_window``, periodic)."""
        p = self.padding
        height, width = self._chip
        rows, cols = data.shape[1], data.shape[2]
        inner_h, inner_w = rows - 2 * p, cols - 2 * p
        if inner_h < height - 2 * p or inner_w < width - 2 * p:
            raise ValueError(f"a block of {cols}x{rows} px is smaller than one chip "
                             f"of the model ({width}x{height} px) with padding {p}.")
        corners = [(r, c) for r in _starts(inner_h, height - 2 * p) for c in _starts(inner_w, width - 2 * p)]
        chips = np.stack([data[:, r:r + height, c:c + width] for r, c in corners])
        results = self.translation.predict_chips(chips, tta=self.tta, source="the block")  # one batch
        # Esri's window is 0 on a chip's first row and column; the floor keeps a pixel that only
        # such a row covers (padding 0) at the chip's value instead of 0 / 0.
        weight = _blend_window(height, width)
        total = np.zeros((results.shape[1], rows, cols), np.float64)
        weights = np.zeros((rows, cols), np.float64)
        for (r, c), result in zip(corners, results):
            total[:, r:r + height, c:c + width] += result * weight
            weights[r:r + height, c:c + width] += weight
        return (total[:, p:rows - p, p:cols - p] / weights[p:rows - p, p:cols - p]).astype(np.float32)

    def _classes(self, scores: np.ndarray) -> np.ndarray:
        """Class scores ``(classes, h, w)`` -> class values ``(h, w)``: the class of the highest
        score where it is at least ``threshold``, else 0 (as ``predict_raster(threshold=...)``)."""
        from toolkit.models.translation import scores_to_classes

        return scores_to_classes(scores, self.translation.target_norm.values, self.threshold)
