"""Band values <-> the [-1, 1] range the networks see (Tanh output), both ways.

``BandNorm`` is for images (input chips, pix2pix targets): one linear map per band, from the
per-band statistics of the training chips. ``MaskEncoding`` is for class labels (Classified_Tiles
targets). Both travel with the data object and the saved model, so predictions come back in the
target's units with the same numbers that trained the model.

Layer: data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from toolkit.stats import BandStatistics

# A band's range for the map to [-1, 1] is [mean - 3 std, mean + 3 std], kept inside [min, max].
# For well-spread bands (8-bit RGB) that is min..max; for long-tailed ones (16-bit
# panchromatic with a few bright roofs) it keeps the bulk of the values from being squeezed
# into a sliver near -1. Values outside are clipped.
NORM_SIGMA = 3.0


class BandCounts:
    """``n_bands_in`` / ``n_bands_out`` of anything that holds an ``input_norm`` and a
    ``target_norm`` (the DataLoaders, a model's :class:`toolkit.models.Translation`)."""

    @property
    def n_bands_in(self) -> int:
        return self.input_norm.n_bands

    @property
    def n_bands_out(self) -> int:
        return self.target_norm.n_bands


SCALINGS = ("sigma", "minmax")


@dataclass
class BandNorm:
    """Per-band statistics and the linear map of band values to [-1, 1].

    ``scaling="sigma"`` (the toolkit's): ``[max(min, mean - 3 std), min(max, mean + 3 std)]``
    maps to [-1, 1], values beyond are clipped, so a few bright outliers do not squeeze the rest.
    ``scaling="minmax"`` (arcgis.learn's raster function): ``[min, max]`` maps to [-1, 1] and
    nothing is clipped, which models saved by arcgis.learn expect.
    """

    min: list[float]
    max: list[float]
    mean: list[float]
    std: list[float]
    band_names: list[str]
    source: str  # where the statistics came from
    scaling: str = "sigma"

    def __post_init__(self) -> None:
        for key in ("min", "max", "mean", "std"):
            values = getattr(self, key)
            bad = [i + 1 for i, v in enumerate(values)
                   if not isinstance(v, (int, float, np.number)) or isinstance(v, bool) or not np.isfinite(v)]
            if bad:
                raise ValueError(f"{self.source}: the {key} of band(s) {bad} is not a finite number "
                                 f"({[values[i - 1] for i in bad][:5]}); band statistics come from "
                                 "finite, not-nodata pixels only.")
        if self.scaling not in SCALINGS:
            raise ValueError(f"{self.source}: scaling must be one of {SCALINGS}, got {self.scaling!r}.")
        mn, mx, mean, std = (np.asarray(v, dtype=np.float64) for v in (self.min, self.max, self.mean, self.std))
        if self.scaling == "minmax":
            self.low, self.high = mn, mx
        else:
            self.low = np.maximum(mn, mean - NORM_SIGMA * std)
            self.high = np.minimum(mx, mean + NORM_SIGMA * std)
        flat = self.high <= self.low  # a constant band: any scale works, keep it finite
        self.high = np.where(flat, self.low + 1.0, self.high)

    @property
    def n_bands(self) -> int:
        return len(self.min)

    @property
    def raster_bands(self) -> int:
        """Bands of the rasters it scales (the networks' bands too)."""
        return self.n_bands

    @classmethod
    def from_esri(cls, all_tiles_stats: Sequence[dict], source: str) -> BandNorm:
        """From an .emd ``AllTilesStats`` / ``AllTilesStats2`` list."""
        def column(key: str) -> list:
            return [_number(b.get(key)) if isinstance(b, dict) else None for b in all_tiles_stats]

        return cls(min=column("Min"), max=column("Max"), mean=column("Mean"), std=column("StdDev"),
                   band_names=[str(b.get("BandName", f"Band_{i + 1}")) if isinstance(b, dict) else f"Band_{i + 1}"
                               for i, b in enumerate(all_tiles_stats)],
                   source=source)

    @classmethod
    def from_statistics(cls, stats: BandStatistics, source: str,
                        band_names: Sequence[str] | None = None) -> BandNorm:
        if np.any(stats.count == 0):
            empty = [i + 1 for i in np.nonzero(stats.count == 0)[0]]
            raise ValueError(f"{source}: band(s) {empty} hold no finite, not-nodata value.")
        names = list(band_names) if band_names else [f"Band_{i + 1}" for i in range(stats.band_count)]
        return cls(min=stats.min.tolist(), max=stats.max.tolist(), mean=stats.mean.tolist(),
                   std=stats.std.tolist(), band_names=names, source=source)

    def normalize(self, data: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """``(bands, h, w)`` band values -> float32 in [-1, 1] (beyond it, unclipped, for
        ``scaling="minmax"`` values outside the statistics); pixels not ``valid`` become 0."""
        # float32, in place: this runs for every chip of every epoch
        low = self.low.astype(np.float32)[:, None, None]
        scale = (2.0 / (self.high - self.low)).astype(np.float32)[:, None, None]
        out = data.astype(np.float32)
        out -= low
        out *= scale
        out -= 1.0
        if self.scaling == "sigma":
            np.clip(out, -1.0, 1.0, out=out)
        if valid is not None:
            out[~valid] = 0.0
        return out

    def denormalize(self, x: np.ndarray) -> np.ndarray:
        """[-1, 1] ``(bands, h, w)`` (or ``(n, bands, h, w)``) -> float32 band values."""
        shape = (-1, 1, 1)
        low, high = self.low.reshape(shape), self.high.reshape(shape)
        return ((np.asarray(x, dtype=np.float64) + 1.0) / 2.0 * (high - low) + low).astype(np.float32)

    def to_dict(self) -> dict:
        return {"kind": "bands", "band_names": list(self.band_names), "min": list(self.min),
                "max": list(self.max), "mean": list(self.mean), "std": list(self.std),
                "low": self.low.tolist(), "high": self.high.tolist(), "source": self.source,
                "scaling": self.scaling}

    @classmethod
    def from_dict(cls, d: dict) -> BandNorm:
        return cls(min=d["min"], max=d["max"], mean=d["mean"], std=d["std"],
                   band_names=d["band_names"], source=d["source"], scaling=d.get("scaling", "sigma"))


def _number(value):
    """A statistic from JSON as a float (None, NaN and +-inf stay not finite, for the check)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


@dataclass
class MaskEncoding:
    """Class labels <-> target bands in [-1, 1].

    One class (e.g. building): one band, background -1 and class +1. Several classes: one band
    per class (one-hot), +1 where the pixel is that class and -1 elsewhere, so background is -1
    in every band. Decoding takes the band with the highest value, and background where no band
    is above 0. Label value 0 is background.
    """

    classes: list[dict]  # [{"Value", "Name", "Color"}]

    @property
    def values(self) -> list[int]:
        return [int(c["Value"]) for c in self.classes]

    @property
    def n_bands(self) -> int:
        return len(self.classes)

    raster_bands = 1  # a class raster: one band of class values, whatever the networks' band count

    @property
    def band_names(self) -> list[str]:
        return [str(c.get("Name", c["Value"])) for c in self.classes]

    def normalize(self, data: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """A class raster as a network's *input* (label-to-image): ``(1, h, w)`` class values ->
        ``(n_bands, h, w)`` one-hot in -1/+1 (:meth:`encode`); pixels not ``valid`` are
        background. The interface of :meth:`BandNorm.normalize`, so inference takes either."""
        label = data[0] if valid is None else np.where(valid[0], data[0], 0)
        return self.encode(label)

    def check(self, label: np.ndarray, path) -> None:
        """Raise ``ValueError`` naming ``path`` when ``label`` holds values that are not classes."""
        unknown = np.setdiff1d(np.unique(label), [0, *self.values])
        if unknown.size:
            raise ValueError(f"{path}: label values {unknown.tolist()[:10]} are not among the classes "
                             f"{self.values} (0 is background).")

    def encode(self, label: np.ndarray) -> np.ndarray:
        """``(h, w)`` class values -> float32 ``(n_bands, h, w)`` of -1/+1."""
        values = np.asarray(self.values).reshape(-1, 1, 1)
        return np.where(label[np.newaxis] == values, 1.0, -1.0).astype(np.float32)

    def decode(self, x: np.ndarray) -> np.ndarray:
        """``(n_bands, h, w)`` scores in [-1, 1] -> ``(h, w)`` class values (0 = background)."""
        x = np.asarray(x)
        best = x.argmax(axis=0)
        values = np.asarray(self.values)[best]
        return np.where(x.max(axis=0) > 0, values, 0)

    def to_dict(self) -> dict:
        return {"kind": "classes", "classes": self.classes,
                "encoding": "one band: background -1, class +1" if self.n_bands == 1 else
                "one band per class: +1 in the class, -1 elsewhere (background -1 everywhere)"}

    @classmethod
    def from_dict(cls, d: dict) -> MaskEncoding:
        return cls(classes=d["classes"])


def target_from_dict(d: dict) -> BandNorm | MaskEncoding:
    """A saved ``to_dict`` of either: band statistics, or classes (a mask target, or the class
    rasters of a label-to-image model's input)."""
    return MaskEncoding.from_dict(d) if d.get("kind") == "classes" else BandNorm.from_dict(d)
