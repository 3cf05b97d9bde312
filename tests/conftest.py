"""Shared fixtures: the real SpaceNet samples from toolkit.datasets.

Tests that use a sample fixture are marked ``sample_data``: when the package registry cannot be
reached they fail with the download error, which names the wheel and where to put it by hand.
Deselect them with ``-m "not sample_data"`` to run the rest offline.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")  # tests draw figures without a screen

from toolkit import datasets  # noqa: E402

SAMPLE_FIXTURES = {"atlanta", "rotterdam", "vegas", "nebraska", "solaris_wheel", "banepa", "banepa_mirror"}


def pytest_collection_modifyitems(items):
    for item in items:
        if SAMPLE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.sample_data)


def _fetch(name: str) -> dict:
    try:
        return datasets.fetch(name)
    except datasets.SampleDataError as err:
        pytest.fail(f"[sample_data] the sample {name!r} is not available: {err}", pytrace=False)


@pytest.fixture(scope="session")
def banepa_mirror() -> Path:
    """The local mirror of the downloaded samples, ``$TOOLKIT_DATA_MIRROR`` (``make test`` sets
    it to ``../shared/data`` where that folder exists): this machine has no internet."""
    from toolkit import banepa

    folder = os.environ.get(banepa.MIRROR_ENV)
    if not folder or not (Path(folder) / banepa.MIRROR_FOLDER).is_dir():
        pytest.fail(f"[sample_data] {banepa.MIRROR_ENV}={folder!r} does not name a folder holding "
                    f"'{banepa.MIRROR_FOLDER}/' (the Banepa files laid out as their source); set it to "
                    "the data mirror, e.g. ../shared/data.", pytrace=False)
    return Path(folder)


@pytest.fixture(scope="session")
def arcgis_fixtures() -> Path:
    """Models saved by arcgis.learn 2.4.4 and reference outputs of its code,
    ``$TOOLKIT_ARCGIS_FIXTURES`` (``make test`` sets it to ``../shared/fixtures/arcgis_learn_2_4_4``)."""
    folder = os.environ.get("TOOLKIT_ARCGIS_FIXTURES")
    if not folder or not (Path(folder) / "regenerate.py").is_file():
        pytest.fail(f"[arcgis_fixtures] TOOLKIT_ARCGIS_FIXTURES={folder!r} does not name the arcgis.learn "
                    "2.4.4 fixtures folder (../shared/fixtures/arcgis_learn_2_4_4).", pytrace=False)
    return Path(folder)


@pytest.fixture(scope="session")
def banepa(banepa_mirror) -> dict:
    """Banepa: 'image' (826 x 1089 px RGB uint8 mosaic, 0.5 m, EPSG:32645) and 'footprints'
    (1,466 polygons), fetched from the mirror into the cache."""
    return _fetch("banepa_buildings")


@pytest.fixture(scope="session")
def atlanta() -> dict:
    """SpaceNet Atlanta: 'image' (900x900 uint16 panchromatic, EPSG:32616) and 'footprints' (43 polygons)."""
    return _fetch("atlanta_buildings")


@pytest.fixture(scope="session")
def rotterdam() -> dict:
    return _fetch("rotterdam")


@pytest.fixture(scope="session")
def vegas() -> dict:
    return _fetch("vegas_roads")


@pytest.fixture(scope="session")
def nebraska() -> dict:
    return _fetch("nebraska_landsat")


@pytest.fixture(scope="session")
def solaris_wheel(atlanta) -> str:
    """Path of the verified sample wheel in the cache (fetched by the atlanta fixture)."""
    return os.fspath(datasets.cache_dir() / datasets.WHEEL_NAME)


# --- chip folders in every layout, made from the real samples ----------------------------------

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def atlanta_tiles(atlanta, tmp_path_factory) -> Path:
    """Classified_Tiles export of Atlanta: 49 chips of 128 px, footprints as class 1."""
    from toolkit import export_training_data

    out = tmp_path_factory.mktemp("layouts") / "atlanta_tiles"
    export_training_data(atlanta["image"], out, in_class_data=atlanta["footprints"], tile_size=128,
                         progress=False)
    return out


@pytest.fixture(scope="session")
def rotterdam_pairs(rotterdam, tmp_path_factory) -> Path:
    """Export_Tiles of Rotterdam: 4-band multispectral (1 m) -> panchromatic (0.5 m, resampled
    onto the multispectral grid): 16 pairs of 64 px."""
    from toolkit import export_training_data

    out = tmp_path_factory.mktemp("layouts") / "rotterdam_pairs"
    export_training_data(rotterdam["multispectral_1"], out,
                         additional_input_raster=rotterdam["panchromatic_1"], tile_size=64,
                         stride=72, progress=False)
    return out


def _atlanta_rgb_windows(atlanta, size, offsets):
    """Atlanta panchromatic chips stretched to uint8 and repeated as 3 bands, with their windows'
    transforms and footprint masks (real imagery, real labels)."""
    import geopandas as gpd
    import numpy as np
    import rasterio
    import rasterio.features
    from rasterio.windows import Window

    footprints = gpd.read_file(atlanta["footprints"])
    out = []
    with rasterio.open(atlanta["image"]) as src:
        for col, row in offsets:
            window = Window(col, row, size, size)
            pan = src.read(1, window=window).astype(float)
            gray = np.clip((pan - 54) / (1200 - 54) * 255, 0, 255).astype(np.uint8)
            transform = src.window_transform(window)
            mask = rasterio.features.rasterize(((g, 1) for g in footprints.geometry), out_shape=(size, size),
                                               transform=transform, dtype=np.uint8)
            out.append((np.stack([gray] * 3), mask, transform, src.crs))
    return out


@pytest.fixture(scope="session")
def arcgis_imitation(atlanta, tmp_path_factory) -> Path:
    """A folder like a real ArcGIS Pro Classified_Tiles export, metadata byte for byte
    (tests/fixtures/esri_formats: CRLF, backslashes, unsorted map.txt with a repeated line,
    template .emd, classes 1 and 2), with 400 px RGB chips for the 19 names map.txt lists."""
    import shutil

    from toolkit import esri
    from toolkit.raster import write_raster

    out = tmp_path_factory.mktemp("layouts") / "arcgis_export"
    (out / "images").mkdir(parents=True)
    (out / "labels").mkdir()
    for name in ("map.txt", "esri_model_definition.emd", "esri_accumulated_stats.json", "stats.txt"):
        shutil.copy(FIXTURES / "esri_formats" / name, out / name)
    names = sorted({Path(row[0]).name for row in esri.read_map(out / "map.txt")})
    offsets = [((37 * i) % 500, (53 * i) % 500) for i in range(len(names))]
    for name, (rgb, mask, transform, crs) in zip(names, _atlanta_rgb_windows(atlanta, 400, offsets)):
        write_raster(out / "images" / name, rgb, transform=transform, crs=crs, nodata=None)
        # ArcGIS's classes here: 1 = ground (most pixels), 2 = building
        write_raster(out / "labels" / name, (mask + 1)[None], transform=transform, crs=crs, nodata=None)
    return out


@pytest.fixture(scope="session")
def side_by_side(atlanta, tmp_path_factory) -> Path:
    """The pix2pix research layout ("maps"): JPEGs holding A (aerial) | B (map) side by side in
    train/ and val/."""
    import numpy as np
    from PIL import Image

    out = tmp_path_factory.mktemp("layouts") / "maps"
    offsets = [((61 * i) % 770, (89 * i) % 770) for i in range(10)]
    for i, (rgb, mask, _, _) in enumerate(_atlanta_rgb_windows(atlanta, 128, offsets)):
        # B: a map rendering: white ground, orange buildings
        b = np.where(mask[None] > 0, np.array([230, 150, 60])[:, None, None], 255).astype(np.uint8)
        pair = np.concatenate([rgb, b], axis=2)
        folder = out / ("val" if i >= 8 else "train")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.moveaxis(pair, 0, -1)).save(folder / f"{i + 1}.jpg", quality=95)
    return out


@pytest.fixture(scope="session")
def hand_made(rotterdam, tmp_path_factory) -> Path:
    """The older hand-made layout Images/train_a (RGB PNG) + Images/train_b (4-band float32 SAR
    GeoTIFF with NaN outside the swath), 64 px chips of the Rotterdam SpaceNet 6 sample."""
    import numpy as np
    import rasterio
    from PIL import Image
    from rasterio.windows import Window

    from toolkit.raster import write_raster

    out = tmp_path_factory.mktemp("layouts") / "hand_made"
    a, b = out / "Images" / "train_a", out / "Images" / "train_b"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    with rasterio.open(rotterdam["rgb"]) as rgb, rasterio.open(rotterdam["sar"]) as sar:
        for i, (col, row) in enumerate((c, r) for r in range(0, 192, 64) for c in range(0, 192, 64)):
            window = Window(col, row, 64, 64)
            Image.fromarray(np.moveaxis(rgb.read(window=window), 0, -1)).save(a / f"tile_{i}.png")
            write_raster(b / f"tile_{i}.tif", sar.read(window=window),
                         transform=sar.window_transform(window), crs=sar.crs, nodata=None)
    return out


# --- unpaired (CycleGAN) folders from three disjoint Rotterdam scenes ---------------------------


@pytest.fixture(scope="session")
def rotterdam_unpaired(rotterdam, tmp_path_factory) -> Path:
    """The reference CycleGAN layout, 64 px GeoTIFF chips at 1 m (EPSG:32631), made with
    ``export_training_data`` from three Rotterdam scenes that do not overlap:

    - ``trainA/ms1_000.tif``...: 16 chips of scene 1's multispectral image (4 bands, float64);
    - ``trainB/pan2_000.tif``...: 18 chips of scene 2's panchromatic image (1 band, uint16), the
      0.5 m pan averaged onto the scene's 1 m multispectral grid, so a B chip covers the same
      64 m x 64 m as an A chip (and no A chip shares a pixel with a B chip);
    - ``testA/r3_000.tif`` + ``testB/r3_000.tif``...: 9 true pairs of scene 3 (multispectral and
      the pan averaged onto the same 1 m grid, the same names).

    Scenes 2 and 3 are filled with 0 above the imaged area (rows 0-99 and 0-149 of the 1 m grid,
    not declared as nodata in the files): those rows are clipped away first.
    """
    import shutil

    from rasterio.windows import Window

    from toolkit import export_training_data
    from toolkit.raster import clip_raster

    work = tmp_path_factory.mktemp("unpaired")
    out = work / "rotterdam_unpaired"

    def export(scene, first_row, stride, name):
        imaged = clip_raster(rotterdam[f"multispectral_{scene}"], work / f"ms{scene}.tif",
                             window=Window(0, first_row, 300, 300 - first_row))
        return export_training_data(imaged, work / name, additional_input_raster=rotterdam[f"panchromatic_{scene}"],
                                    resampling="average", tile_size=64, stride=stride, progress=False)

    train_a = export_training_data(rotterdam["multispectral_1"], work / "a", tile_size=64, stride=72,
                                   progress=False)
    train_b = export(2, 100, 47, "b")
    test = export(3, 150, (96, 43), "test")
    for folder, chips, prefix in (("trainA", train_a.images, "ms1"), ("trainB", train_b.images2, "pan2"),
                                  ("testA", test.images, "r3"), ("testB", test.images2, "r3")):
        (out / folder).mkdir(parents=True)
        for i, chip in enumerate(chips):
            shutil.copy(chip, out / folder / f"{prefix}_{i:03d}.tif")
    return out


@pytest.fixture(scope="session")
def rotterdam_cyclegan_export(rotterdam, tmp_path_factory) -> Path:
    """``export_training_data(metadata_format="CycleGAN")`` of two rasters of different resolution,
    band count and place: A/ = scene 1's multispectral image (4 bands, 1 m): 16 chips of 64 px,
    each 64 m x 64 m; B/ = scene 2's panchromatic image (1 band, 0.5 m): 64 chips of 64 px, each
    32 m x 32 m. Both cut with tile 64 px, stride 72 px, each on its own grid."""
    from toolkit import export_training_data

    out = tmp_path_factory.mktemp("unpaired") / "rotterdam_cyclegan"
    export_training_data(rotterdam["multispectral_1"], out, additional_input_raster=rotterdam["panchromatic_2"],
                         metadata_format="CycleGAN", tile_size=64, stride=72, progress=False)
    return out


@pytest.fixture(scope="session")
def rotterdam_pan_green(rotterdam, tmp_path_factory) -> Path:
    """Unpaired band synthesis in the reference layout, from three parts of one Rotterdam scene
    (columns 0-99, 100-199 and 200-299 of its 1 m grid; no part shares a pixel):

    - ``trainA/``: 40 chips of the panchromatic image averaged onto the 1 m grid (part 1);
    - ``trainB/``: 40 chips of the multispectral image's green band (part 2);
    - ``testA/`` + ``testB/``: 10 true pairs of both (part 3), the same names.

    64 px GeoTIFF chips. One band each, so CycleGAN's identity loss applies (it anchors the
    translation's sign; see tests/test_cyclegan.py).
    """
    import numpy as np
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.windows import Window

    from toolkit.raster import write_raster

    out = tmp_path_factory.mktemp("unpaired") / "rotterdam_pan_green"
    with rasterio.open(rotterdam["multispectral_1"]) as ms, rasterio.open(rotterdam["panchromatic_1"]) as pan:
        green = ms.read(2).astype(np.float32)[np.newaxis]
        pan_1m = pan.read(out_shape=(1, ms.height, ms.width), resampling=Resampling.average)
        for data, folder, first_col, row_step in ((pan_1m, "trainA", 0, 12), (green, "trainB", 100, 12),
                                                  (pan_1m, "testA", 200, 48), (green, "testB", 200, 48)):
            (out / folder).mkdir(parents=True)
            windows = [Window(col, row, 64, 64) for row in range(0, ms.height - 63, row_step)
                       for col in range(first_col, first_col + 100 - 63, 36)]
            for i, w in enumerate(windows):
                write_raster(out / folder / f"chip_{i:03d}.tif", data[:, w.row_off:w.row_off + 64,
                                                                         w.col_off:w.col_off + 64],
                             transform=ms.window_transform(w), crs=ms.crs, nodata=None)
    return out
