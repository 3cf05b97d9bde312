"""toolkit.export_training_data on the real SpaceNet samples."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import rasterio.features
from rasterio.warp import Resampling, calculate_default_transform, reproject
from rasterio.windows import Window
from scipy import ndimage

from toolkit import esri, export_training_data
from toolkit import export as export_module


def read(path):
    with rasterio.open(path) as src:
        return src.read(), src.transform, src.crs, src.nodata


def windows(size, tile, stride):
    """Row-major windows of the trimmed grid, in chip order."""
    offsets = range(0, size - tile + 1, stride)
    return [Window(c, r, tile, tile) for r in offsets for c in offsets]


def no_leftovers(parent: Path, name: str) -> bool:
    return not any(p.name.startswith(f".{name}.") for p in parent.iterdir())


@pytest.fixture(scope="module")
def atlanta_export(atlanta, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "chips"
    summary = export_training_data(atlanta["image"], out, in_class_data=atlanta["footprints"],
                                   tile_size=256, stride=128, progress=False)
    return summary


def test_chips_carry_the_exact_georeference_and_pixels_of_their_windows(atlanta, atlanta_export):
    assert atlanta_export.metadata_format == "Classified_Tiles"
    assert atlanta_export.num_chips == 36  # 900 px, tile 256, stride 128: 6 x 6, trimmed
    with rasterio.open(atlanta["image"]) as src:
        for path, window in zip(atlanta_export.images, windows(900, 256, 128)):
            data, transform, crs, nodata = read(path)
            assert transform == src.window_transform(window)  # exact, not approximate
            assert crs == src.crs and nodata == src.nodata
            assert data.dtype == np.uint16
            np.testing.assert_array_equal(data, src.read(window=window))
            world = esri.read_world_file(path.with_suffix(".tfw"))
            assert world.almost_equals(transform, precision=1e-9)


def test_labels_equal_a_direct_rasterization_of_the_footprints(atlanta, atlanta_export):
    footprints = gpd.read_file(atlanta["footprints"])
    with rasterio.open(atlanta["image"]) as src:
        for path, window in zip(atlanta_export.labels, windows(900, 256, 128)):
            label, transform, crs, _ = read(path)
            expected = rasterio.features.rasterize(
                ((g, 1) for g in footprints.geometry), out_shape=(256, 256),
                transform=src.window_transform(window), dtype=np.uint8)
            assert crs == src.crs and transform == src.window_transform(window)
            np.testing.assert_array_equal(label[0], expected)
    assert sum(read(p)[0].sum() for p in atlanta_export.labels) > 0


def test_metadata_files_parse_and_agree_with_the_chips(atlanta_export):
    out = atlanta_export.out_folder
    chips = sorted((out / "images").glob("*.tif"))
    assert [p.name for p in chips] == [f"{i:09d}.tif" for i in range(36)]

    raw = (out / "map.txt").read_bytes()
    assert raw.endswith(b" \r\n") and b"images\\000000000.tif  labels\\000000000.tif \r\n" in raw
    rows = esri.read_map(out / "map.txt")
    assert len(rows) == 36
    assert all((out / image).is_file() and (out / label).is_file() for image, label in rows)

    stats = json.loads((out / "esri_accumulated_stats.json").read_text())
    emd = json.loads((out / "esri_model_definition.emd").read_text())
    assert stats["MetaDataMode"] == "Classified_Tiles" and stats["NumTiles"] == 36
    assert (stats["TileSizeX"], stats["TileSizeY"], stats["NumBands"]) == (256, 256, 1)
    assert stats["Classes"] == [{"ClassValue": 1, "ClassName": "1", "Color": emd["Classes"][0]["Color"]}]
    assert [c["Value"] for c in emd["Classes"]] == [1]
    assert (emd["ImageWidth"], emd["ImageHeight"]) == (256, 256)

    pixels = np.stack([read(p)[0][0] for p in chips]).astype(np.float64)
    band = emd["AllTilesStats"][0]
    assert band["Min"] == pixels.min() and band["Max"] == pixels.max()
    assert band["Mean"] == pytest.approx(pixels.mean(), rel=1e-9)
    assert band["StdDev"] == pytest.approx(pixels.std(), rel=1e-9)
    assert stats["BandStatsState"][0]["Num"] == pixels.size

    labels = np.stack([read(p)[0][0] for p in sorted((out / "labels").glob("*.tif"))])
    class_stats = stats["ClassPixelStats"]
    assert class_stats["NumPixelsPerClass"] == [int((labels == 1).sum())]
    assert class_stats["NumImagesPerClass"] == [int((labels == 1).any(axis=(1, 2)).sum())]
    text = (out / "stats.txt").read_text()
    assert "images = 36 *1*256*256" in text and "classes = 1" in text


def test_contour_reinforcement_changes_exactly_the_boundary_pixels(atlanta, tmp_path):
    plain = export_training_data(atlanta["image"], tmp_path / "plain", in_class_data=atlanta["footprints"],
                                 tile_size=256, progress=False)
    ringed = export_training_data(atlanta["image"], tmp_path / "ringed", in_class_data=atlanta["footprints"],
                                  tile_size=256, contour_width=1, progress=False)
    assert [c["Name"] for c in ringed.classes] == ["1", "boundary"]
    footprints = gpd.read_file(atlanta["footprints"])
    cross = ndimage.generate_binary_structure(2, 1)
    with rasterio.open(atlanta["image"]) as src:
        changed_total = 0
        for p, r, window in zip(plain.labels, ringed.labels, windows(900, 256, 256)):
            before, after = read(p)[0][0], read(r)[0][0]
            # Expected: pixels of a footprint with a 4-neighbour outside it, from each polygon
            # alone, computed on a padded grid so the chip edge is not taken for a boundary.
            transform = src.window_transform(Window(window.col_off - 2, window.row_off - 2, 260, 260))
            expected = np.zeros((260, 260), dtype=bool)
            for geom in footprints.geometry:
                mask = rasterio.features.rasterize([(geom, 1)], out_shape=(260, 260),
                                                   transform=transform, dtype=np.uint8).astype(bool)
                filled = ndimage.binary_fill_holes(mask)
                expected |= filled & ~ndimage.binary_erosion(filled, cross) & mask
            expected = expected[2:-2, 2:-2]
            changed = before != after
            np.testing.assert_array_equal(changed, expected)
            assert set(np.unique(after[changed])) <= {2}
            np.testing.assert_array_equal(before > 0, after > 0)  # footprints keep their extent
            changed_total += changed.sum()
    assert changed_total > 1000


def test_wider_contours_grow_inward(atlanta, tmp_path):
    one = export_training_data(atlanta["image"], tmp_path / "w1", in_class_data=atlanta["footprints"],
                               tile_size=300, contour_width=1, progress=False)
    three = export_training_data(atlanta["image"], tmp_path / "w3", in_class_data=atlanta["footprints"],
                                 tile_size=300, contour_width=3, contour_value=7, progress=False)
    assert [c["Value"] for c in three.classes] == [1, 7]
    for a, b in zip(one.labels, three.labels):
        thin, thick = read(a)[0][0], read(b)[0][0]
        assert np.all((thick == 7)[thin == 2])  # the 1-pixel ring lies inside the 3-pixel one
        assert (thick == 7).sum() >= 2 * (thin == 2).sum() or (thin == 2).sum() == 0
        np.testing.assert_array_equal(thin > 0, thick > 0)


def test_class_value_field_gives_class_values(atlanta, tmp_path):
    footprints = gpd.read_file(atlanta["footprints"])
    area = footprints.geometry.area
    footprints["kind"] = np.where(area > area.median(), 2, 1)
    path = tmp_path / "footprints.gpkg"
    footprints[["kind", "geometry"]].to_file(path)
    summary = export_training_data(atlanta["image"], tmp_path / "out", in_class_data=path,
                                   class_value_field="kind", tile_size=450, progress=False)
    assert [c["Value"] for c in summary.classes] == [1, 2]
    with rasterio.open(atlanta["image"]) as src:
        for label_path, window in zip(summary.labels, windows(900, 450, 450)):
            expected = rasterio.features.rasterize(
                zip(footprints.geometry, footprints["kind"]), out_shape=(450, 450),
                transform=src.window_transform(window), dtype=np.uint8)
            np.testing.assert_array_equal(read(label_path)[0][0], expected)


def test_a_pair_on_different_grids_comes_out_aligned(atlanta, tmp_path):
    # The target: the same scene reprojected to Web Mercator at a coarser, non-aligned resolution.
    target = tmp_path / "atlanta_3857.tif"
    with rasterio.open(atlanta["image"]) as src:
        transform, width, height = calculate_default_transform(
            src.crs, "EPSG:3857", src.width, src.height, *src.bounds, resolution=0.7)
        profile = src.profile | {"crs": "EPSG:3857", "transform": transform, "width": width,
                                 "height": height}
        with rasterio.open(target, "w", **profile) as dst:
            reproject(rasterio.band(src, 1), rasterio.band(dst, 1), resampling=Resampling.bilinear)
    summary = export_training_data(atlanta["image"], tmp_path / "pairs", additional_input_raster=target,
                                   tile_size=256, edge="pad", progress=False)
    assert summary.metadata_format == "Export_Tiles" and len(summary.images2) == summary.num_chips
    assert "images\\000000000.tif  images2\\000000000.tif \r\n" in \
        (summary.out_folder / "map.txt").read_bytes().decode()
    emd = json.loads((summary.out_folder / "esri_model_definition.emd").read_text())
    assert len(emd["AllTilesStats2"]) == 1
    for a_path, b_path in zip(summary.images, summary.images2):
        a, ta, ca, _ = read(a_path)
        b, tb, cb, nodata = read(b_path)
        assert (ta, ca) == (tb, cb) and b.dtype == np.uint16 and nodata == 0
        both = (a[0] > 0) & (b[0] > 0)
        if both.sum() < 10000:
            continue

        def corr(dx, dy):
            aa = np.roll(a[0].astype(float), (dy, dx), axis=(0, 1))
            keep = both & np.roll(both, (dy, dx), axis=(0, 1))
            return np.corrcoef(aa[keep], b[0].astype(float)[keep])[0, 1]

        best = max(((dx, dy) for dx in range(-2, 3) for dy in range(-2, 3)), key=lambda s: corr(*s))
        assert best == (0, 0) and corr(0, 0) > 0.9


def test_rotterdam_multispectral_to_panchromatic_pair(rotterdam, tmp_path):
    summary = export_training_data(rotterdam["multispectral_1"], tmp_path / "ms2pan",
                                   additional_input_raster=rotterdam["panchromatic_1"],
                                   tile_size=128, stride=64, progress=False)
    assert summary.num_chips == 9
    for a_path, b_path in zip(summary.images, summary.images2):
        a, ta, _, _ = read(a_path)
        b, tb, _, _ = read(b_path)
        assert a.shape == (4, 128, 128) and a.dtype == np.float64
        assert b.shape == (1, 128, 128) and b.dtype == np.uint16 and ta == tb
        assert np.corrcoef(a.mean(axis=0).ravel(), b[0].ravel())[0, 1] > 0.8


def test_class_raster_labels(vegas, tmp_path):
    summary = export_training_data(vegas["image"], tmp_path / "roads", in_class_data=vegas["mask"],
                                   tile_size=325, progress=False)
    assert summary.num_chips == 16 and [c["Value"] for c in summary.classes] == [255]
    with rasterio.open(vegas["mask"]) as mask:
        for path, window in zip(summary.labels, windows(1300, 325, 325)):
            np.testing.assert_array_equal(read(path)[0][0], mask.read(1, window=window))


def test_pad_keeps_the_edge_and_min_valid_fraction_skips(atlanta, tmp_path):
    padded = export_training_data(atlanta["image"], tmp_path / "pad", tile_size=256, edge="pad",
                                  progress=False)
    assert padded.num_chips == 16  # 900 px -> 4 tiles per side, the last one padded
    edge_chip, transform, _, nodata = read(padded.images[3])
    assert nodata == 0 and np.all(edge_chip[:, :, 900 - 768:] == 0) and np.all(edge_chip[:, :, :132] > 0)
    with rasterio.open(atlanta["image"]) as src:
        assert transform == src.window_transform(Window(768, 0, 256, 256))
    # The 7 edge chips hold 132/256 or less of valid pixels.
    strict = export_training_data(atlanta["image"], tmp_path / "strict", tile_size=256, edge="pad",
                                  min_valid_fraction=0.6, progress=False)
    assert (strict.num_chips, strict.skipped) == (9, 7)


def test_nodata_chips_are_skipped_and_nodata_is_carried(nebraska, tmp_path):
    summary = export_training_data(nebraska["image"], tmp_path / "landsat", tile_size=512,
                                   progress=False)
    assert summary.skipped > 0 and summary.num_chips + summary.skipped == 5 * 9
    for path in summary.images:
        data, _, crs, nodata = read(path)
        assert nodata == -9999 and data.dtype == np.int16 and crs.to_epsg() == 4326
        assert (data != -9999).any()
    stats = json.loads((summary.out_folder / "esri_accumulated_stats.json").read_text())
    assert stats["BandStatsState"][0]["Min"] > -9999  # nodata is left out of the statistics


def test_resize_scales_the_transform_and_rasterizes_on_the_new_grid(atlanta, tmp_path):
    summary = export_training_data(atlanta["image"], tmp_path / "small", in_class_data=atlanta["footprints"],
                                   tile_size=300, resize_to=128, progress=False)
    footprints = gpd.read_file(atlanta["footprints"])
    with rasterio.open(atlanta["image"]) as src:
        for i, window in enumerate(windows(900, 300, 300)):
            image, transform, _, _ = read(summary.images[i])
            assert image.shape == (1, 128, 128) and image.dtype == np.uint16
            assert transform.almost_equals(src.window_transform(window) @ rasterio.Affine.scale(300 / 128))
            label = read(summary.labels[i])[0][0]
            expected = rasterio.features.rasterize(((g, 1) for g in footprints.geometry),
                                                   out_shape=(128, 128), transform=transform)
            np.testing.assert_array_equal(label, expected)
            # Bilinear resize of a real image: close to block averages of the source.
            source = src.read(1, window=window).astype(float)
            assert abs(image.mean() - source.mean()) < 0.02 * source.mean()
    stats = json.loads((summary.out_folder / "esri_accumulated_stats.json").read_text())
    assert stats["TileSizeX"] == 128 and stats["MinCellSize"]["x"] == pytest.approx(0.5 * 300 / 128)


def test_png_chips_with_world_files(atlanta, rotterdam, tmp_path):
    summary = export_training_data(atlanta["image"], tmp_path / "png", tile_size=450, image_chip_format="PNG",
                                   progress=False)
    with rasterio.open(atlanta["image"]) as src:
        for path, window in zip(summary.images, windows(900, 450, 450)):
            assert path.suffix == ".png" and path.with_suffix(".pgw").is_file()
            data, transform, crs, _ = read(path)
            assert transform.almost_equals(src.window_transform(window)) and crs == src.crs
            np.testing.assert_array_equal(data, src.read(window=window))
            assert esri.read_world_file(path.with_suffix(".pgw")).almost_equals(transform)
    with pytest.raises(ValueError, match="PNG"):
        export_training_data(rotterdam["multispectral_1"], tmp_path / "float_png", tile_size=100,
                             image_chip_format="PNG", progress=False)
    assert not (tmp_path / "float_png").exists()


# --- bad input: a clear error, and nothing left behind ------------------------------------------


def check_refused(out: Path, error, match, call):
    existed = out.exists()
    with pytest.raises(error, match=match):
        call()
    assert out.exists() == existed  # not created by a refused export
    assert no_leftovers(out.parent, out.name)


def test_missing_or_unreadable_raster(tmp_path):
    out = tmp_path / "out"
    check_refused(out, FileNotFoundError, "missing.tif", lambda: export_training_data(tmp_path / "missing.tif", out))
    bad = tmp_path / "bad.tif"
    bad.write_text("not a raster")
    check_refused(out, ValueError, r"bad\.tif.*not a raster", lambda: export_training_data(bad, out))


def test_rasters_that_do_not_overlap(atlanta, rotterdam, tmp_path):
    out = tmp_path / "out"
    check_refused(out, ValueError, "does not overlap", lambda: export_training_data(
        atlanta["image"], out, additional_input_raster=rotterdam["panchromatic_1"], progress=False))


def test_vectors_that_do_not_overlap(atlanta, vegas, tmp_path):
    out = tmp_path / "out"
    check_refused(out, ValueError, "no feature overlaps", lambda: export_training_data(
        atlanta["image"], out, in_class_data=vegas["roads"], progress=False))


def test_vector_without_crs(atlanta, tmp_path):
    shapefile = tmp_path / "footprints.shp"
    gpd.read_file(atlanta["footprints"])[["geometry"]].to_file(shapefile)
    shapefile.with_suffix(".prj").unlink()
    assert gpd.read_file(shapefile).crs is None
    out = tmp_path / "out"
    check_refused(out, ValueError, "no CRS", lambda: export_training_data(
        atlanta["image"], out, in_class_data=shapefile, progress=False))


def test_class_value_field_that_does_not_exist(atlanta, tmp_path):
    out = tmp_path / "out"
    check_refused(out, ValueError, "'height' does not exist.*building", lambda: export_training_data(
        atlanta["image"], out, in_class_data=atlanta["footprints"], class_value_field="height",
        progress=False))


def test_tile_larger_than_the_raster(atlanta, tmp_path):
    out = tmp_path / "out"
    check_refused(out, ValueError, "larger than the raster", lambda: export_training_data(
        atlanta["image"], out, tile_size=1024, progress=False))


def test_output_folder_that_holds_files(atlanta, tmp_path):
    out = tmp_path / "full"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    check_refused(out, FileExistsError, "overwrite=True", lambda: export_training_data(
        atlanta["image"], out, tile_size=450, progress=False))
    assert (out / "keep.txt").read_text() == "mine"
    # overwrite=True replaces only the toolkit's own output: the user's file is named, and kept
    check_refused(out, FileExistsError, "keep.txt", lambda: export_training_data(
        atlanta["image"], out, tile_size=450, overwrite=True, progress=False))
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    summary = export_training_data(atlanta["image"], out, tile_size=450, overwrite=True, progress=False)
    assert summary.num_chips == 4
    summary = export_training_data(atlanta["image"], out, tile_size=300, overwrite=True, progress=False)
    assert summary.num_chips == 9  # an earlier export is the toolkit's own: replaced
    assert no_leftovers(tmp_path, "full")


def test_a_failure_midway_leaves_the_old_folder_untouched(atlanta, tmp_path, monkeypatch):
    out = tmp_path / "chips"
    export_training_data(atlanta["image"], out, tile_size=450, progress=False)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    calls = []

    def failing_write(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return real_write(*args, **kwargs)

    real_write = export_module.write_raster
    monkeypatch.setattr(export_module, "write_raster", failing_write)
    with pytest.raises(OSError, match="disk full"):
        export_training_data(atlanta["image"], out, tile_size=300, overwrite=True, progress=False)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert no_leftovers(tmp_path, "chips")


def test_unknown_resampling_name(rotterdam, tmp_path):
    out = tmp_path / "out"
    check_refused(out, ValueError, "resampling", lambda: export_training_data(
        rotterdam["multispectral_1"], out, additional_input_raster=rotterdam["panchromatic_1"],
        resampling="smooth", progress=False))


def test_only_tiles_with_features(atlanta, tmp_path):
    every = export_training_data(atlanta["image"], tmp_path / "all", in_class_data=atlanta["footprints"],
                                 tile_size=128, progress=False)
    some = export_training_data(atlanta["image"], tmp_path / "some", in_class_data=atlanta["footprints"],
                                tile_size=128, output_nofeature_tiles=False, progress=False)
    with_features = [p for p in every.labels if read(p)[0].any()]
    assert some.num_chips == len(with_features) < every.num_chips
    assert some.skipped == every.num_chips - len(with_features)
    assert all(read(p)[0].any() for p in some.labels)
    # chips are numbered without gaps, and each keeps its own window's georeference
    assert [p.name for p in some.labels] == [f"{i:09d}.tif" for i in range(some.num_chips)]
    assert [read(p)[1] for p in some.labels] == [read(p)[1] for p in with_features]
    with pytest.raises(ValueError, match="needs in_class_data"):
        export_training_data(atlanta["image"], tmp_path / "x", output_nofeature_tiles=False)


# --- CycleGAN: two rasters, each on its own grid ------------------------------------------------------


@pytest.fixture(scope="module")
def pan_web_mercator(rotterdam, tmp_path_factory):
    """Scene 2's panchromatic image reprojected to EPSG:3857 at 0.7 m: another CRS, resolution,
    place and band count than scene 1's multispectral image."""
    path = tmp_path_factory.mktemp("cyclegan") / "pan2_3857.tif"
    with rasterio.open(rotterdam["panchromatic_2"]) as src:
        transform, width, height = calculate_default_transform(
            src.crs, "EPSG:3857", src.width, src.height, *src.bounds, resolution=0.7)
        with rasterio.open(path, "w", **(src.profile | {"crs": "EPSG:3857", "transform": transform,
                                                         "width": width, "height": height})) as dst:
            reproject(rasterio.band(src, 1), rasterio.band(dst, 1), resampling=Resampling.bilinear)
    return path


def test_cyclegan_export_cuts_each_raster_on_its_own_grid(rotterdam, pan_web_mercator, tmp_path):
    out = tmp_path / "unpaired"
    summary = export_training_data(rotterdam["multispectral_1"], out, additional_input_raster=pan_web_mercator,
                                   metadata_format="CycleGAN", tile_size=64, stride=72, progress=False)
    with rasterio.open(pan_web_mercator) as src:
        pan_width, pan_height = src.width, src.height
    n_b = len(range(0, pan_width - 63, 72)) * len(range(0, pan_height - 63, 72))
    assert (summary.metadata_format, summary.num_chips, summary.num_chips_b) == ("CycleGAN", 16, n_b)
    assert "16 (A/) and" in repr(summary)
    assert summary.images[0] == out / "A" / "images" / "000000000.tif"
    assert summary.images2[0] == out / "B" / "images" / "000000000.tif"

    for raster, chips, folder in ((rotterdam["multispectral_1"], summary.images, "A"),
                                  (pan_web_mercator, summary.images2, "B")):
        with rasterio.open(raster) as src:
            cols = range(0, src.width - 63, 72)
            chip_windows = [Window(c, r, 64, 64) for r in range(0, src.height - 63, 72) for c in cols]
            assert len(chips) == len(chip_windows)
            for path, window in zip(chips, chip_windows):
                data, transform, crs, _ = read(path)
                assert crs == src.crs and transform == src.window_transform(window)  # its own grid
                np.testing.assert_array_equal(data, src.read(window=window))
                assert esri.read_world_file(path.with_suffix(".tfw")).almost_equals(transform, precision=1e-9)
            pixels = np.stack([read(p)[0] for p in chips]).astype(np.float64)

        stats = json.loads((out / folder / "esri_accumulated_stats.json").read_text())
        emd = json.loads((out / folder / "esri_model_definition.emd").read_text())
        assert stats["MetaDataMode"] == "CycleGAN" and stats["NumTiles"] == len(chips)
        assert stats["NumBands"] == src.count and "NumBands2" not in stats
        assert stats["MinCellSize"]["x"] == pytest.approx(src.res[0])
        assert [b["Mean"] for b in emd["AllTilesStats"]] == pytest.approx(pixels.mean(axis=(0, 2, 3)).tolist())
        assert [b["Max"] for b in emd["AllTilesStats"]] == pixels.max(axis=(0, 2, 3)).tolist()
        assert "AllTilesStats2" not in emd and (emd["ImageWidth"], emd["ImageHeight"]) == (64, 64)
        rows = esri.read_map(out / folder / "map.txt")
        assert sorted(rows) == [(f"images/{p.name}",) for p in chips]
    assert (out / "B" / "stats.txt").read_text().startswith(f"images = {n_b} *1*64*64")
    manifest = json.loads((out / ".toolkit-output.json").read_text())
    assert "A/images/000000000.tif" in manifest["files"] and "B/map.txt" in manifest["files"]


def test_cyclegan_export_resizes_both_domains_alike(rotterdam, tmp_path):
    summary = export_training_data(rotterdam["multispectral_1"], tmp_path / "resized",
                                   additional_input_raster=rotterdam["panchromatic_2"], metadata_format="CycleGAN",
                                   tile_size=128, resize_to=64, progress=False)
    assert (summary.num_chips, summary.num_chips_b) == (4, 16)  # 300 px and 600 px, trimmed
    for path, cell in ((summary.images[0], 2 * 1.0000483), (summary.images2[0], 2 * 0.4999935)):
        data, transform, _, _ = read(path)
        assert data.shape[1:] == (64, 64) and transform.a == pytest.approx(cell)


def test_cyclegan_export_refusals(rotterdam, atlanta, tmp_path):
    ms, pan = rotterdam["multispectral_1"], rotterdam["panchromatic_2"]
    out = tmp_path / "unpaired"
    check_refused(out, ValueError, "needs additional_input_raster", lambda: export_training_data(
        ms, out, metadata_format="CycleGAN", tile_size=64, progress=False))
    check_refused(out, ValueError, "takes no in_class_data", lambda: export_training_data(
        atlanta["image"], out, additional_input_raster=pan, in_class_data=atlanta["footprints"],
        metadata_format="CycleGAN", tile_size=64, progress=False))
    # a tile larger than domain A's raster (300 px) is refused before anything is written
    check_refused(out, ValueError, "larger than the raster", lambda: export_training_data(
        ms, out, additional_input_raster=pan, metadata_format="CycleGAN", tile_size=400, progress=False))

    out.mkdir()
    (out / "keep.txt").write_text("mine")
    check_refused(out, FileExistsError, "keep.txt", lambda: export_training_data(
        ms, out, additional_input_raster=pan, metadata_format="CycleGAN", tile_size=150, overwrite=True,
        progress=False))
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    first = export_training_data(ms, out, additional_input_raster=pan, metadata_format="CycleGAN",
                                 tile_size=150, overwrite=True, progress=False)
    again = export_training_data(ms, out, additional_input_raster=pan, metadata_format="CycleGAN",
                                 tile_size=100, overwrite=True, progress=False)  # its own: replaced
    assert (first.num_chips, first.num_chips_b, again.num_chips, again.num_chips_b) == (4, 16, 9, 36)
    assert no_leftovers(tmp_path, "unpaired")


def test_a_cyclegan_export_failing_in_domain_b_leaves_nothing_half_written(rotterdam, tmp_path, monkeypatch):
    out = tmp_path / "unpaired"
    export_training_data(rotterdam["multispectral_1"], out, additional_input_raster=rotterdam["panchromatic_2"],
                         metadata_format="CycleGAN", tile_size=150, progress=False)
    before = sorted((p.relative_to(out), p.stat().st_size) for p in out.rglob("*"))
    real_write = export_module.write_raster

    def failing_write(path, *args, **kwargs):
        if Path(path).parent.parent.name == "B":
            raise OSError("disk full")
        return real_write(path, *args, **kwargs)

    monkeypatch.setattr(export_module, "write_raster", failing_write)
    with pytest.raises(OSError, match="disk full"):
        export_training_data(rotterdam["multispectral_1"], out, additional_input_raster=rotterdam["panchromatic_2"],
                             metadata_format="CycleGAN", tile_size=100, overwrite=True, progress=False)
    assert sorted((p.relative_to(out), p.stat().st_size) for p in out.rglob("*")) == before
    assert no_leftovers(tmp_path, "unpaired")
