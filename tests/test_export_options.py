"""The options of Pro's "Export Training Data For Deep Learning" on the real SpaceNet samples:
start_index, image_chip_format (TIFF, PNG, JPEG), in_mask_polygons, buffer_radius and
rotation_angle (SpaceNet data: CC BY-SA 4.0)."""

from __future__ import annotations

import math
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import rasterio.features
import shapely
from rasterio.windows import Window
from scipy import ndimage

from toolkit import esri, export_training_data, prepare_data
from toolkit.export import rotate_about_centre
from toolkit.raster import write_raster


def read(path):
    with rasterio.open(path) as src:
        return src.read(), src.transform, src.crs


def windows(size, tile, stride):
    """Row-major windows of the trimmed grid, in chip order."""
    offsets = range(0, size - tile + 1, stride)
    return [Window(c, r, tile, tile) for r in offsets for c in offsets]


def footprint(transform, width, height):
    return shapely.Polygon([transform @ xy for xy in [(0, 0), (width, 0), (width, height), (0, height)]])


def check_refused(out: Path, error, match, call):
    with pytest.raises(error, match=match):
        call()
    assert not out.exists()  # validated before anything is written
    assert not any(p.name.startswith(f".{out.name}.") for p in out.parent.iterdir())


@pytest.fixture(scope="module")
def atlanta_gray(atlanta, tmp_path_factory) -> Path:
    """The Atlanta panchromatic scene stretched to uint8 and repeated as 3 bands (real imagery in
    the bands JPEG chips hold), same CRS and transform."""
    out = tmp_path_factory.mktemp("export_options") / "atlanta_gray.tif"
    with rasterio.open(atlanta["image"]) as src:
        pan = src.read(1).astype(np.float64)
        gray = np.clip((pan - 54) / (1200 - 54) * 255, 0, 255).astype(np.uint8)
        write_raster(out, np.stack([gray] * 3), transform=src.transform, crs=src.crs, nodata=None)
    return out


# --- start_index -----------------------------------------------------------------------------


def test_start_index_numbers_the_chips_from_it(atlanta, tmp_path):
    summary = export_training_data(atlanta["image"], tmp_path / "chips", in_class_data=atlanta["footprints"],
                                   tile_size=64, stride=256, start_index=1000, progress=False)
    names = [f"{i:09d}.tif" for i in range(1000, 1016)]  # 4 x 4 windows
    assert [p.name for p in summary.images] == names and [p.name for p in summary.labels] == names
    assert sorted(p.name for p in (tmp_path / "chips" / "images").glob("*.tif")) == names
    assert all(p.with_suffix(".tfw").is_file() for p in summary.images)
    rows = esri.read_map(tmp_path / "chips" / "map.txt")
    assert rows == [(f"images/{n}", f"labels/{n}") for n in names]
    with rasterio.open(atlanta["image"]) as src:  # chip 1000 is still the first window
        data, transform, _ = read(summary.images[0])
        np.testing.assert_array_equal(data, src.read(window=Window(0, 0, 64, 64)))
        assert transform == src.window_transform(Window(0, 0, 64, 64))


# --- image_chip_format -----------------------------------------------------------------------


@pytest.mark.parametrize("name, expected", [("TIFF", "TIFF"), ("tif", "TIFF"), ("tiff", "TIFF"),
                                            ("PNG", "PNG"), ("png", "PNG"), ("JPEG", "JPEG"),
                                            ("jpeg", "JPEG"), ("jpg", "JPEG"), ("Jpg", "JPEG")])
def test_image_chip_format_takes_pros_values_in_any_case(name, expected):
    assert esri.chip_format(name) is esri.CHIP_FORMATS[expected]


def test_jpeg_chips_with_world_files_round_trip_through_prepare_data(atlanta, atlanta_gray, tmp_path):
    out = tmp_path / "jpeg"
    summary = export_training_data(atlanta_gray, out, in_class_data=atlanta["footprints"], tile_size=64,
                                   stride=128, image_chip_format="JPEG", progress=False)
    assert summary.num_chips == 49
    footprints = gpd.read_file(atlanta["footprints"])
    with rasterio.open(atlanta_gray) as src:
        for image, label, window in zip(summary.images, summary.labels, windows(900, 64, 128)):
            assert image.suffix == ".jpg" and label.suffix == ".png" and image.stem == label.stem
            assert image.with_suffix(".jgw").is_file() and Path(f"{image}.aux.xml").is_file()
            data, transform, crs = read(image)
            assert crs == src.crs and transform.almost_equals(src.window_transform(window), precision=1e-9)
            assert esri.read_world_file(image.with_suffix(".jgw")).almost_equals(transform, precision=1e-9)
            assert data.dtype == np.uint8 and data.shape == (3, 64, 64)
            # JPEG is lossy: close to the source pixels, not equal
            assert np.abs(data.astype(float) - src.read(window=window)).mean() < 4
            mask, label_transform, _ = read(label)  # labels stay exact (PNG)
            assert label_transform.almost_equals(transform, precision=1e-9)
            expected = rasterio.features.rasterize(((g, 1) for g in footprints.geometry), out_shape=(64, 64),
                                                   transform=src.window_transform(window), dtype=np.uint8)
            np.testing.assert_array_equal(mask[0], expected)
    raw = (out / "map.txt").read_bytes()
    assert b"images\\000000000.jpg  labels\\000000000.png \r\n" in raw

    data = prepare_data(out, batch_size=4, val_split_pct=0.2)
    assert data.folder.layout == "Classified_Tiles" and data.folder.cell_size == pytest.approx((0.5, 0.5))
    assert len(data.train_ds) + len(data.valid_ds) == 49
    assert all(p.input.suffix == ".jpg" and p.target.suffix == ".png" for p in data.folder.pairs)
    x, y = data.one_batch()
    assert tuple(x.shape) == (4, 3, 64, 64) and tuple(y.shape[-2:]) == (64, 64)


def test_jpeg_refuses_rasters_it_cannot_hold(atlanta, rotterdam, tmp_path):
    out = tmp_path / "out"
    check_refused(out, ValueError, r"in_raster .*sample_geotiff\.tif.*JPEG.*uint8",  # uint16 pan
                  lambda: export_training_data(atlanta["image"], out, tile_size=64, image_chip_format="jpg"))
    check_refused(out, ValueError, r"additional_input_raster .*sar_masked\.tif.*JPEG.*4 band\(s\) of float32",
                  lambda: export_training_data(rotterdam["rgb"], out, additional_input_raster=rotterdam["sar"],
                                               tile_size=64, image_chip_format="JPEG"))  # SAR -> RGB pairs
    check_refused(out, ValueError, r"MRF.*not supported",
                  lambda: export_training_data(rotterdam["rgb"], out, tile_size=64, image_chip_format="MRF"))
    check_refused(out, ValueError, r"image_chip_format must be 'TIFF', 'PNG' or 'JPEG'.*'gif'",
                  lambda: export_training_data(rotterdam["rgb"], out, tile_size=64, image_chip_format="gif"))


# --- in_mask_polygons ------------------------------------------------------------------------


def test_mask_polygons_keep_only_chips_completely_within_them(atlanta, tmp_path):
    footprints = gpd.read_file(atlanta["footprints"])
    # The mask: the built-up area, 25 m around the real footprints, given in WGS 84 as a file.
    area = gpd.GeoDataFrame(geometry=[footprints.geometry.buffer(25).union_all()], crs=footprints.crs)
    mask_file = tmp_path / "mask.gpkg"
    area.to_crs("EPSG:4326").to_file(mask_file)
    summary = export_training_data(atlanta["image"], tmp_path / "chips", tile_size=64, stride=64,
                                   in_mask_polygons=mask_file, progress=False)

    mask = gpd.read_file(mask_file).to_crs(footprints.crs).geometry.union_all()
    with rasterio.open(atlanta["image"]) as src:
        all_windows = windows(900, 64, 64)
        inside = [w for w in all_windows if mask.covers(footprint(src.window_transform(w), 64, 64))]
        touching = [w for w in all_windows if mask.intersects(footprint(src.window_transform(w), 64, 64))]
        assert 0 < len(inside) < len(touching) < len(all_windows)  # the rule matters here
        assert summary.num_chips == len(inside) and summary.skipped == len(all_windows) - len(inside)
        for path, window in zip(summary.images, inside):
            data, transform, _ = read(path)
            assert transform == src.window_transform(window)
            np.testing.assert_array_equal(data, src.read(window=window))
            assert mask.covers(footprint(transform, 64, 64))  # each chip's bounds lie in the mask


def test_mask_polygons_refused_when_unusable(atlanta, tmp_path):
    footprints = gpd.read_file(atlanta["footprints"])
    out = tmp_path / "out"

    def export(mask):
        return lambda: export_training_data(atlanta["image"], out, tile_size=64, in_mask_polygons=mask)

    check_refused(out, FileNotFoundError, r"in_mask_polygons .*missing\.gpkg", export(tmp_path / "missing.gpkg"))
    outlines = footprints.set_geometry(footprints.geometry.boundary)
    check_refused(out, ValueError, r"in_mask_polygons GeoDataFrame: a mask is made of polygons.*LineString",
                  export(outlines))
    check_refused(out, ValueError, r"in_mask_polygons.*no CRS", export(footprints.set_crs(None, allow_override=True)))
    elsewhere = footprints.set_geometry(footprints.geometry.translate(100_000, 0))
    check_refused(out, ValueError, r"in_mask_polygons.*no polygon overlaps", export(elsewhere))
    # Overlapping polygons that hold no whole chip: nothing to export, nothing written.
    check_refused(out, ValueError, r"none of the 196 tiles .*completely within in_mask_polygons", export(footprints))


# --- buffer_radius ---------------------------------------------------------------------------


def test_buffer_radius_turns_points_into_circles_of_that_radius(atlanta, tmp_path):
    footprints = gpd.read_file(atlanta["footprints"])
    points = footprints.set_geometry(footprints.geometry.centroid)  # real building centres, UTM metres
    radius = 4.0  # metres: 8 px at 0.5 m
    summary = export_training_data(atlanta["image"], tmp_path / "chips", in_class_data=points, tile_size=64,
                                   stride=64, buffer_radius=radius, output_nofeature_tiles=False, progress=False)
    assert summary.num_chips > 0
    xy = np.array([(p.x, p.y) for p in points.geometry])
    distances = np.hypot(*(xy[:, None, :] - xy[None, :, :]).transpose(2, 0, 1)) + np.eye(len(xy)) * 1e9
    checked = 0
    for path in summary.labels:
        label, transform, _ = read(path)
        components, _ = ndimage.label(label[0])
        for i, (x, y) in enumerate(xy):
            col, row = ~transform @ (x, y)
            margin = radius / 0.5 + 2
            if not (margin < col < 64 - margin and margin < row < 64 - margin) or distances[i].min() < 2 * radius + 1:
                continue  # circle cut by the chip edge, or touching another one
            component = components == components[int(row), int(col)]
            assert components[int(row), int(col)] > 0
            area = component.sum() * 0.25  # m^2
            assert area == pytest.approx(math.pi * radius**2, rel=0.06)
            rows, cols = np.nonzero(component)
            centres_x, centres_y = transform @ (cols + 0.5, rows + 0.5)
            assert np.hypot(centres_x - x, centres_y - y).max() <= radius  # a disc, not a square
            checked += 1
    assert checked >= 10


def test_buffer_radius_refusals(atlanta, vegas, tmp_path):
    footprints = gpd.read_file(atlanta["footprints"])
    points = footprints.set_geometry(footprints.geometry.centroid)
    out = tmp_path / "out"

    def export(**kwargs):
        return lambda: export_training_data(atlanta["image"], out, tile_size=64, **kwargs)

    check_refused(out, ValueError, r"in_class_data GeoDataFrame: holds 43 point feature\(s\).*buffer_radius",
                  export(in_class_data=points))
    check_refused(out, ValueError, r"buffer_radius=2\.0 turns point features into circles.*Polygon",
                  export(in_class_data=atlanta["footprints"], buffer_radius=2.0))
    check_refused(out, ValueError, r"buffer_radius must be a distance >= 0", export(in_class_data=points, buffer_radius=-1))
    check_refused(out, ValueError, r"buffer_radius must be a distance >= 0",
                  export(in_class_data=points, buffer_radius=float("nan")))
    check_refused(out, ValueError, r"buffer_radius .*needs in_class_data", export(buffer_radius=3))
    check_refused(out, ValueError, r"class raster; buffer_radius",
                  export(in_class_data=vegas["mask"], buffer_radius=3))


# --- rotation_angle --------------------------------------------------------------------------


def test_rotation_angle_90_adds_three_turned_chips_per_window(atlanta, tmp_path):
    plain = export_training_data(atlanta["image"], tmp_path / "plain", in_class_data=atlanta["footprints"],
                                 tile_size=64, stride=256, progress=False)
    turned = export_training_data(atlanta["image"], tmp_path / "turned", in_class_data=atlanta["footprints"],
                                  tile_size=64, stride=256, rotation_angle=90, progress=False)
    assert turned.num_chips == 4 * plain.num_chips == 64
    assert [p.name for p in turned.images] == [f"{i:09d}.tif" for i in range(64)]  # sequential
    with rasterio.open(atlanta["image"]) as src:
        source = src.read(1)
        for w, (image0, label0) in enumerate(zip(plain.images, plain.labels)):
            data0, transform0, _ = read(image0)
            mask0 = read(label0)[0]
            centre = transform0 @ (32, 32)
            for k in range(4):
                path = turned.images[4 * w + k]
                data, transform, crs = read(path)
                assert crs == src.crs
                # The ground turned by k * 90 degrees, exactly on the pixel grid.
                np.testing.assert_array_equal(data[0], np.rot90(data0[0], k))
                np.testing.assert_array_equal(read(turned.labels[4 * w + k])[0][0], np.rot90(mask0[0], k))
                # Georeferenced: the same centre, and every pixel centre on its source pixel.
                assert transform @ (32, 32) == pytest.approx(centre, abs=1e-6)
                assert abs(transform.a) == pytest.approx(0.5 * abs(math.cos(math.radians(90 * k))), abs=1e-12)
                rows, cols = np.mgrid[0:64, 0:64]
                src_cols, src_rows = ~src.transform @ (transform @ (cols + 0.5, rows + 0.5))
                np.testing.assert_array_equal(data[0], source[np.floor(src_rows).astype(int),
                                                             np.floor(src_cols).astype(int)])
                world = esri.read_world_file(path.with_suffix(".tfw"))
                assert world.almost_equals(transform, precision=1e-9)
    assert read(turned.images[1])[1] == rotate_about_centre(read(turned.images[0])[1], (64, 64), 90)


def test_rotation_angle_45_warps_onto_the_turned_grid(atlanta, tmp_path):
    summary = export_training_data(atlanta["image"], tmp_path / "chips", tile_size=64, stride=768,
                                   rotation_angle=45, progress=False)
    assert summary.num_chips == 4 * 8  # 2 x 2 windows, 0, 45, ..., 315 degrees
    with rasterio.open(atlanta["image"]) as src:
        source = src.read(1)
        data, transform, _ = read(summary.images[1])  # window 0 turned by 45 degrees
        assert transform.b == pytest.approx(-transform.a) and transform.a == pytest.approx(0.5 / math.sqrt(2))
        rows, cols = np.mgrid[0:64, 0:64]
        src_cols, src_rows = ~src.transform @ (transform @ (cols + 0.5, rows + 0.5))
        inside = (src_cols >= 0) & (src_rows >= 0) & (src_cols < 900) & (src_rows < 900)
        assert 0.8 < inside.mean() < 1  # window 0 sits in the corner: the turned chip reaches past it
        # Nearest neighbour: each pixel holds the source pixel under its centre. Centres that fall
        # on a source pixel edge (the turn is about a pixel corner) may take either side's.
        matched = np.zeros(data[0].shape, dtype=bool)
        for dc in (-1e-6, 1e-6):
            for dr in (-1e-6, 1e-6):
                r = np.clip(np.floor(src_rows + dr), 0, 899).astype(int)
                c = np.clip(np.floor(src_cols + dc), 0, 899).astype(int)
                matched |= data[0] == source[r, c]
        assert matched[inside].all()
        assert np.all(data[0][~inside] == src.nodata)  # beyond the raster: nodata


@pytest.mark.parametrize("kwargs, match", [
    ({"rotation_angle": -10}, r"rotation_angle must lie in \[0, 360\)"),
    ({"rotation_angle": 360}, r"rotation_angle must lie in \[0, 360\)"),
    ({"rotation_angle": float("nan")}, r"rotation_angle must be a number"),
    ({"rotation_angle": "90"}, r"rotation_angle must be a number"),
    ({"start_index": -1}, r"start_index must lie in 0\.\.999999999"),
    ({"start_index": 1.5}, r"start_index must be a whole number"),
    ({"start_index": True}, r"start_index must be a whole number"),
])
def test_bad_option_values_are_refused(atlanta, tmp_path, kwargs, match):
    out = tmp_path / "out"
    check_refused(out, ValueError, match,
                  lambda: export_training_data(atlanta["image"], out, tile_size=64, **kwargs))
