"""toolkit.raster: clipping a scene keeps its georeference."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from toolkit.raster import clip_raster


def test_clip_by_window_and_bounds(atlanta, tmp_path):
    window = Window(600, 100, 300, 500)
    out = clip_raster(atlanta["image"], tmp_path / "east.tif", window=window)
    with rasterio.open(atlanta["image"]) as src, rasterio.open(out) as dst:
        assert (dst.width, dst.height) == (300, 500)
        assert dst.crs == src.crs and dst.transform == src.window_transform(window)
        assert dst.nodata == src.nodata and dst.dtypes == src.dtypes
        np.testing.assert_array_equal(dst.read(), src.read(window=window))
        bounds = dst.bounds
    again = clip_raster(atlanta["image"], tmp_path / "again.tif", bounds=tuple(bounds))
    with rasterio.open(again) as a, rasterio.open(out) as b:
        assert a.transform == b.transform and np.array_equal(a.read(), b.read())
    with pytest.raises(FileExistsError, match="overwrite=True"):
        clip_raster(atlanta["image"], out, window=window)
    with pytest.raises(ValueError, match="window or bounds"):
        clip_raster(atlanta["image"], tmp_path / "x.tif")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.tif", "east.tif"]
