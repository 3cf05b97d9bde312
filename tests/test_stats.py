"""toolkit.stats: running per-band statistics (arithmetic on synthetic arrays)."""

import numpy as np
import pytest

from toolkit.stats import BandStatistics, band_validity


def test_merged_chips_equal_statistics_of_all_valid_pixels():
    rng = np.random.default_rng(0)
    chips = [rng.normal(100 + 50 * i, 10 + i, size=(3, 16, 16)) for i in range(5)]
    for chip in chips:
        chip[:, :3, :3] = -9999  # nodata corner
    chips[2][1] = np.nan  # a band with nothing valid in one chip
    stats = BandStatistics(3)
    for chip in chips:
        stats.update(chip, band_validity(chip, -9999))
    for b in range(3):
        values = np.concatenate([c[b].ravel() for c in chips])
        values = values[(values != -9999) & ~np.isnan(values)]
        assert stats.count[b] == values.size
        assert stats.mean[b] == pytest.approx(values.mean(), rel=1e-12)
        assert stats.std[b] == pytest.approx(values.std(), rel=1e-10)
        assert (stats.min[b], stats.max[b]) == (values.min(), values.max())


def test_band_without_valid_pixels_reports_none():
    stats = BandStatistics(1)
    chip = np.zeros((1, 4, 4), dtype=np.uint16)
    stats.update(chip, band_validity(chip, 0))
    assert stats.as_all_tiles_stats(["Band_1"])[0]["Min"] is None
    assert stats.as_band_stats_state()[0]["Num"] == 0
