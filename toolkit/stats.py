"""Per-band statistics over the valid pixels of many chips, accumulated one chip at a time.

Layer: formats, I/O and runtime.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["BandStatistics", "band_validity", "check_band_coverage"]


def band_validity(data: np.ndarray, nodata: float | None) -> np.ndarray:
    """Boolean ``(bands, height, width)``: True where a band value is data: not nodata and, for
    float bands, finite (NaN, +inf and -inf are never data: they would poison statistics and
    normalisation)."""
    valid = np.ones(data.shape, dtype=bool)
    if np.issubdtype(data.dtype, np.floating):
        valid &= np.isfinite(data)
    if nodata is not None and np.isfinite(nodata):
        valid &= data != nodata
    return valid


def check_band_coverage(valid: np.ndarray, source) -> None:
    """Raise ``ValueError`` naming ``source`` (a chip) and the band when a band of ``valid``
    ``(bands, h, w)`` holds no data while other bands do: such a band (all NaN, +-inf or nodata)
    would reach the network as a constant and silently distort every prediction. A chip with
    no data in any band is nodata as a whole, which is allowed."""
    has_data = valid.reshape(valid.shape[0], -1).any(axis=1)
    if has_data.any() and not has_data.all():
        empty = (np.flatnonzero(~has_data) + 1).tolist()
        raise ValueError(f"{source}: band(s) {empty} hold no finite value (all NaN, +-inf or nodata) "
                         "while the other bands hold data.")


class BandStatistics:
    """Running count, mean, variance, min and max per band.

    Chips are merged with Chan et al.'s pairwise update, so the result equals the statistics of
    all valid pixels at once without holding them in memory.
    """

    def __init__(self, band_count: int) -> None:
        self.count = np.zeros(band_count, dtype=np.int64)
        self.mean = np.zeros(band_count)
        self.m2 = np.zeros(band_count)  # sum of squared deviations from the mean
        self.min = np.full(band_count, np.inf)
        self.max = np.full(band_count, -np.inf)

    @property
    def band_count(self) -> int:
        return len(self.count)

    def update(self, data: np.ndarray, valid: np.ndarray) -> None:
        """Add one chip: ``data`` ``(bands, h, w)``, ``valid`` boolean of the same shape."""
        for b in range(self.band_count):
            values = data[b][valid[b]].astype(np.float64)
            n = values.size
            if n == 0:
                continue
            mean = values.mean()
            m2 = ((values - mean) ** 2).sum()
            total = self.count[b] + n
            delta = mean - self.mean[b]
            self.mean[b] += delta * n / total
            self.m2[b] += m2 + delta**2 * self.count[b] * n / total
            self.count[b] = total
            self.min[b] = min(self.min[b], values.min())
            self.max[b] = max(self.max[b], values.max())

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation per band."""
        return np.sqrt(self.m2 / np.maximum(self.count, 1))

    def as_all_tiles_stats(self, band_names: Sequence[str]) -> list[dict]:
        """The .emd's ``AllTilesStats`` list: ``[{BandName, Min, Max, Mean, StdDev}]``."""
        return [
            {"BandName": name, "Min": _num(self.min[b]), "Max": _num(self.max[b]),
             "Mean": _num(self.mean[b]), "StdDev": _num(self.std[b])}
            for b, name in enumerate(band_names)
        ]

    def as_band_stats_state(self) -> list[dict]:
        """The stats file's ``BandStatsState`` list: ``[{Min, Max, Mean, StdDev, M1, M2, Num}]``."""
        return [
            {"Min": _num(self.min[b]), "Max": _num(self.max[b]), "Mean": _num(self.mean[b]),
             "StdDev": _num(self.std[b]), "M1": _num(self.mean[b]), "M2": _num(self.m2[b]),
             "Num": int(self.count[b])}
            for b in range(self.band_count)
        ]


def _num(value: float) -> float | None:
    """A JSON-safe float: bands without any valid pixel report None."""
    return float(value) if np.isfinite(value) else None
