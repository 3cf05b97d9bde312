"""toolkit.data.split: validation chips on ground of their own (prepare_data(validation_area=))."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.windows import Window, bounds
from shapely.geometry import box

from toolkit import export_training_data, prepare_data
from toolkit.data.split import chip_outline, split_by_area, split_scene
from toolkit.data.layouts import index_folder
from toolkit.raster import clip_raster


@pytest.fixture(scope="module")
def banepa_chips(banepa, tmp_path_factory):
    """The west 551 columns of Banepa cut as the demo does (128 px, stride 64: chips overlap by
    half), and the demo's validation strip, the northern 192 rows, in map coordinates."""
    work = tmp_path_factory.mktemp("split")
    split = split_scene(banepa["image"])
    west = clip_raster(banepa["image"], work / "west.tif", window=split.train_window)
    summary = export_training_data(west, work / "chips", in_class_data=banepa["footprints"], tile_size=128,
                                   stride=64, contour_width=2, output_nofeature_tiles=False, progress=False)
    return summary.out_folder, split.validation


def test_split_scene_cuts_the_mosaic_into_west_strip_and_east(banepa):
    split = split_scene(banepa["image"])
    with rasterio.open(banepa["image"]) as src:
        height, transform = src.height, src.transform
        whole = box(*src.bounds)
    assert split.train_window == Window(0, 0, 551, height)
    assert split.validation.equals(box(*bounds(Window(0, 0, 551, 192), transform)))
    assert split.train.contains(split.validation)
    assert split.train.intersection(split.held_out).area == 0
    assert split.train.union(split.held_out).symmetric_difference(whole).area < 1e-6
    with pytest.raises(ValueError, match="cannot be split"):
        split_scene(banepa["image"], train_share=1.0)


def _pixels(pairs) -> set:
    """The map positions of the pixel centres of the chips, rounded to the 0.5 m grid."""
    cells = set()
    for pair in pairs:
        with rasterio.open(pair.input) as src:
            cols, rows = np.meshgrid(np.arange(src.width) + 0.5, np.arange(src.height) + 0.5)
            xs, ys = src.transform @ (cols.ravel(), rows.ravel())
            cells.update(zip(np.round(np.asarray(xs) * 2).astype(int), np.round(np.asarray(ys) * 2).astype(int)))
    return cells


def test_no_validation_chip_shares_a_pixel_with_a_training_chip(banepa_chips):
    folder, strip = banepa_chips
    split = split_by_area(index_folder(folder).pairs, strip, where=str(folder))
    # 7 columns of chips; rows at 0 and 64 px lie in the strip, the row at 128 px crosses its edge
    assert (len(split.valid), len(split.left_out)) == (14, 7)
    assert len(split.train) + len(split.valid) + len(split.left_out) == len(index_folder(folder).pairs)
    assert not _pixels(split.valid) & _pixels(split.train)
    for pair in split.valid:
        assert strip.buffer(1e-6).contains(chip_outline(pair.input)[0])
    # a random split of the same chips shares pixels: the reason for the area
    data = prepare_data(folder, batch_size=4, seed=0)
    assert _pixels(data.valid_ds.pairs) & _pixels(data.train_ds.pairs)


def test_prepare_data_takes_the_area_as_geometry_frame_or_file(banepa_chips, tmp_path):
    folder, strip = banepa_chips
    data = prepare_data(folder, batch_size=4, validation_area=strip)
    assert len(data.valid_ds) == 14 and len(data.left_out) == 7
    assert "7 across the validation area's edge left out" in repr(data)
    # a GeoDataFrame in another CRS (reprojected), and a vector file
    frame = gpd.GeoDataFrame(geometry=[strip], crs="EPSG:32645").to_crs("EPSG:4326")
    assert len(prepare_data(folder, batch_size=4, validation_area=frame).valid_ds) == 14
    frame.to_file(tmp_path / "strip.gpkg")
    from_file = prepare_data(folder, batch_size=4, validation_area=tmp_path / "strip.gpkg")
    assert [p.name for p in from_file.valid_ds.pairs] == [p.name for p in data.valid_ds.pairs]


def test_an_area_that_holds_no_whole_chip_is_refused(banepa_chips):
    folder, strip = banepa_chips
    x0, y0, x1, y1 = strip.bounds
    with pytest.raises(ValueError, match="no chip lies wholly inside validation_area"):
        prepare_data(folder, validation_area=box(x0, y1 - 10, x0 + 10, y1))


def test_chips_without_georeference_are_refused(hand_made):
    with pytest.raises(ValueError, match="no georeference"):
        prepare_data(hand_made, validation_area=box(0, 0, 10, 10))
