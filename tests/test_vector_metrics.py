"""toolkit.vectorize and toolkit.metrics: footprints from masks, pixel and object scores."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import rasterio.features
from affine import Affine
from shapely.geometry import box

from toolkit import vectorize
from toolkit.metrics import footprint_scores, object_counts, object_f1, pixel_scores, psnr, ssim


@pytest.fixture(scope="module")
def atlanta_mask(atlanta):
    """The 43 real footprints rasterized on the Atlanta grid, and the grid."""
    footprints = gpd.read_file(atlanta["footprints"])
    with rasterio.open(atlanta["image"]) as src:
        mask = rasterio.features.rasterize(((g, 1) for g in footprints.geometry), out_shape=src.shape,
                                           transform=src.transform, dtype=np.uint8)
        return footprints, mask, src.transform, src.crs, src.profile


def test_vectorize_gives_back_the_footprints(atlanta_mask, tmp_path):
    footprints, mask, transform, crs, profile = atlanta_mask
    polygons = vectorize(mask, transform=transform, crs=crs)
    assert polygons.crs == crs and set(polygons.geom_type) <= {"Polygon"}
    # areas within rasterization error: half a pixel (0.25 m²) along each outline
    pixel = abs(transform.a * transform.e)
    tolerance = 0.5 * footprints.geometry.length.sum() * abs(transform.a) + pixel
    assert abs(polygons["area"].sum() - footprints.area.sum()) < tolerance
    scores = object_f1(polygons, footprints)
    assert scores["f1"] > 0.9, scores
    # the same from a GeoTIFF, and written to a GeoPackage with its CRS
    raster = tmp_path / "mask.tif"
    with rasterio.open(raster, "w", **(profile | {"dtype": "uint8", "nodata": None})) as dst:
        dst.write(mask[None])
    from_file = vectorize(raster)
    assert len(from_file) == len(polygons) and from_file.crs == crs
    from_file.to_file(tmp_path / "footprints.gpkg")
    back = gpd.read_file(tmp_path / "footprints.gpkg")
    assert back.crs == crs and len(back) == len(polygons)


def test_vectorize_options(atlanta_mask):
    footprints, mask, transform, crs, _ = atlanta_mask
    noisy = mask.copy()
    noisy[5:7, 5:7] = 1  # speckle: a 2 x 2 px blob (1 m²)
    plain = vectorize(noisy, transform=transform, crs=crs)
    assert len(vectorize(noisy, transform=transform, crs=crs, min_area=2.0)) == len(plain) - 1
    assert len(vectorize(noisy, transform=transform, crs=crs, opening=2)) < len(plain)
    simple = vectorize(mask, transform=transform, crs=crs, simplify_tolerance=1.0)
    vertices = lambda g: sum(len(p.exterior.coords) for p in g.geometry)  # noqa: E731
    assert vertices(simple) < vertices(plain) and len(simple) == len(vectorize(mask, transform=transform, crs=crs))
    scores = np.where(mask > 0, 0.8, 0.1).astype(np.float32)  # a score raster, threshold 0.5
    assert len(vectorize(scores, transform=transform, crs=crs)) == len(simple)
    hole = np.zeros((20, 20), np.uint8)
    hole[2:18, 2:18] = 1
    hole[8:12, 8:12] = 0
    ring = vectorize(hole, transform=Affine.identity(), crs=None)
    assert len(ring) == 1 and len(ring.geometry[0].interiors) == 1 and ring["area"][0] == 16 * 16 - 16
    with pytest.raises(ValueError, match="transform"):
        vectorize(hole)


def test_pixel_scores_by_hand():
    truth = np.zeros((4, 4), bool)
    truth[:2, :2] = True  # 4 px
    pred = np.zeros((4, 4), bool)
    pred[:2, :3] = True  # 6 px, 4 right
    s = pixel_scores(pred, truth)
    assert s["iou"] == pytest.approx(4 / 6) and s["precision"] == pytest.approx(4 / 6)
    assert s["recall"] == 1.0 and s["f1"] == pytest.approx(0.8) and s["accuracy"] == pytest.approx(14 / 16)
    empty = np.zeros((4, 4), bool)
    assert pixel_scores(empty, truth) | {} == {"iou": 0.0, "f1": 0.0, "precision": 0.0, "recall": 0.0,
                                                "accuracy": 0.75}
    assert pixel_scores(pred, empty)["precision"] == 0.0 and pixel_scores(pred, empty)["recall"] == 0.0
    assert pixel_scores(empty, empty)["f1"] == 1.0 and pixel_scores(truth, truth)["iou"] == 1.0


def test_pixel_scores_of_rasters(atlanta_mask, tmp_path):
    _, mask, transform, crs, profile = atlanta_mask
    paths = []
    for name, data in (("pred", np.roll(mask, 2, axis=1)), ("truth", mask)):
        path = tmp_path / f"{name}.tif"
        with rasterio.open(path, "w", **(profile | {"dtype": "uint8", "nodata": None})) as dst:
            dst.write(data[None])
        paths.append(path)
    s = pixel_scores(*paths)
    assert 0.7 < s["iou"] < 1.0 and s == pixel_scores(np.roll(mask, 2, axis=1) > 0, mask > 0)
    shifted = tmp_path / "shifted.tif"
    with rasterio.open(shifted, "w", **(profile | {"dtype": "uint8", "nodata": None,
                                                   "transform": transform @ Affine.translation(1, 0)})) as dst:
        dst.write(mask[None])
    with pytest.raises(ValueError, match="different grids"):
        pixel_scores(shifted, paths[1])


def test_object_f1_by_hand():
    truth = gpd.GeoDataFrame(geometry=[box(0, 0, 10, 10), box(20, 0, 30, 10)], crs="EPSG:32616")
    good = gpd.GeoDataFrame(geometry=[box(1, 0, 11, 10), box(20, 0, 30, 10)], crs="EPSG:32616")
    assert object_f1(good, truth) == {"f1": 1.0, "precision": 1.0, "recall": 1.0, "tp": 2, "fp": 0, "fn": 0}
    empty = gpd.GeoDataFrame(geometry=[], crs="EPSG:32616")
    assert object_f1(empty, truth) | {} == {"f1": 0.0, "precision": 0.0, "recall": 0.0, "tp": 0, "fp": 0, "fn": 2}
    assert object_f1(good, empty)["fp"] == 2 and object_f1(good, empty)["f1"] == 0.0
    assert object_f1(empty, empty)["f1"] == 1.0
    # one prediction spanning both truths: IoU 100/300 with each, below 0.5: no match
    span = gpd.GeoDataFrame(geometry=[box(0, 0, 30, 10)], crs="EPSG:32616")
    assert object_f1(span, truth) | {} == {"f1": 0.0, "precision": 0.0, "recall": 0.0, "tp": 0, "fp": 1, "fn": 2}
    # two predictions on one truth: one is matched, the other is a false positive
    twice = gpd.GeoDataFrame(geometry=[box(0, 0, 10, 10), box(0, 0, 9, 10)], crs="EPSG:32616")
    assert object_f1(twice, truth.iloc[:1])[("tp")] == 1 and object_f1(twice, truth.iloc[:1])["fp"] == 1
    # predictions in another CRS are reprojected to the truth's
    assert object_f1(good.to_crs("EPSG:4326"), truth)["tp"] == 2
    # a prediction that is a geometry collection (polygon + line sliver, as clipping can leave):
    # scored by its area, like the polygon alone (IoU 90/110 here)
    from shapely.geometry import GeometryCollection, LineString

    mixed = gpd.GeoDataFrame(geometry=[GeometryCollection([box(1, 0, 11, 10), LineString([(11, 0), (15, 0)])])],
                             crs="EPSG:32616")
    assert object_f1(mixed, truth.iloc[:1]) == object_f1(good.iloc[:1], truth.iloc[:1])


def test_psnr_and_ssim_by_hand():
    a = np.zeros((1, 16, 16))
    b = a + 0.1
    assert psnr(a, b, data_range=2.0) == pytest.approx(10 * np.log10(4 / 0.01))
    assert psnr(a, a, data_range=2.0) == float("inf")
    rng = np.random.default_rng(0)
    image = rng.uniform(-1, 1, (2, 32, 32))
    assert ssim(image, image, data_range=2.0) == pytest.approx(1.0)
    assert abs(ssim(image, rng.uniform(-1, 1, (2, 32, 32)), data_range=2.0)) < 0.1  # unrelated images


def test_footprint_scores_in_a_held_out_area(atlanta_mask, tmp_path):
    footprints, mask, transform, crs, profile = atlanta_mask
    raster = tmp_path / "mask.tif"
    with rasterio.open(raster, "w", **(profile | {"dtype": "uint8", "nodata": None})) as dst:
        dst.write(mask[None])
    predicted = vectorize(raster)
    everywhere = footprint_scores(raster, predicted, footprints)
    assert everywhere["pixel"]["iou"] > 0.97 and everywhere["object"]["f1"] > 0.9
    east = box(*(transform @ (600, 900)), *(transform @ (900, 0)))
    held_out = footprint_scores(raster, predicted, footprints, area=east)
    assert held_out["object"]["tp"] + held_out["object"]["fn"] < len(footprints)
    assert held_out["pixel"]["iou"] > 0.97
    # the truth in another CRS gives the same scores
    again = footprint_scores(raster, predicted, footprints.to_crs("EPSG:4326"), area=east)
    assert again["object"] == held_out["object"]
    assert again["pixel"]["iou"] == pytest.approx(held_out["pixel"]["iou"], abs=0.01)


# --- footprints one by one: the outline class separates touching buildings ---------------------------


@pytest.fixture(scope="module")
def touching(atlanta, tmp_path_factory):
    """The 43 real footprints grown by 3 m, so that neighbours touch (as blurry predictions do),
    exported with 2 px outlines (contour_width=2), made into soft building / outline scores
    (Gaussian, sigma 1 px): the scores a contour-trained model gives at its best."""
    from scipy import ndimage

    from toolkit import export_training_data

    with rasterio.open(atlanta["image"]) as src:
        crs, transform, profile = src.crs, src.transform, src.profile
    grown = gpd.read_file(atlanta["footprints"]).to_crs(crs)
    grown["geometry"] = grown.buffer(3.0, join_style="mitre")
    out = tmp_path_factory.mktemp("touching") / "chips"
    summary = export_training_data(atlanta["image"], out, in_class_data=grown, tile_size=900,
                                   contour_width=2, progress=False)
    with rasterio.open(summary.labels[0]) as src:
        label = src.read(1)
    scores = np.stack([ndimage.gaussian_filter((label == v).astype(np.float32), 1.0) for v in (1, 2)])
    return {"grown": grown, "label": label, "scores": scores, "classes": summary.classes,
            "transform": transform, "crs": crs, "profile": profile}


def test_outlines_separate_touching_footprints(touching):
    t = touching
    merged = vectorize(t["scores"], transform=t["transform"], crs=t["crs"])  # as before: no outline band
    separated = vectorize(t["scores"], boundary_band=1, transform=t["transform"], crs=t["crs"])
    assert len(merged) < 40 and object_f1(merged, t["grown"])["f1"] < 0.8  # neighbours joined
    assert len(separated) == 43
    assert object_f1(separated, t["grown"])["f1"] >= 0.95
    assert set(separated.geom_type) <= {"Polygon", "MultiPolygon"} and separated.crs == t["crs"]


def test_a_prediction_raster_tells_vectorize_its_outline_band(touching, tmp_path):
    from toolkit.vector import footprint_tags

    t = touching
    assert [c.get("Boundary", False) for c in t["classes"]] == [False, True]
    path = tmp_path / "scores.tif"
    with rasterio.open(path, "w", **(t["profile"] | {"count": 2, "dtype": "float32", "nodata": None})) as dst:
        dst.write(t["scores"])
        dst.update_tags(**footprint_tags(t["classes"], class_raster=False))
    separated = vectorize(path)  # no arguments: the tags name the outline band
    assert len(separated) == 43 and object_f1(separated, t["grown"])["f1"] >= 0.95
    assert len(vectorize(path, boundary_band=False)) < 40
    # windows much smaller than the scene, overlapping by more than a building: the same polygons
    windowed = vectorize(path, window_size=128, margin=80)
    assert len(windowed) == 43 and object_f1(windowed, separated)["f1"] == 1.0

    classes = tmp_path / "classes.tif"  # a class raster (predict_raster(threshold=...)) too
    with rasterio.open(classes, "w", **(t["profile"] | {"count": 1, "dtype": "uint8", "nodata": None})) as dst:
        dst.write(t["label"][None])
        dst.update_tags(**footprint_tags(t["classes"], class_raster=True))
    assert object_f1(vectorize(classes), t["grown"])["f1"] >= 0.95
    assert len(vectorize(classes, boundary_band=False)) < 40


def test_tuned_settings_in_the_tags_are_the_defaults(touching, tmp_path):
    from toolkit.vector import footprint_tags

    t = touching
    path = tmp_path / "scores.tif"
    settings = {"threshold": 0.5, "boundary_threshold": 0.5, "min_area": 200.0}
    with rasterio.open(path, "w", **(t["profile"] | {"count": 2, "dtype": "float32", "nodata": None})) as dst:
        dst.write(t["scores"])
        dst.update_tags(**footprint_tags(t["classes"], class_raster=False, settings=settings))
    big = vectorize(path)
    assert big["area"].min() >= 200.0 and len(big) < 43
    assert len(vectorize(path, min_area=0.0)) == 43  # an argument wins over the tags


def test_regularized_footprints_have_straight_edges(touching):
    t = touching
    plain = vectorize(t["scores"], boundary_band=1, transform=t["transform"], crs=t["crs"])
    regular = vectorize(t["scores"], boundary_band=1, regularize=True, transform=t["transform"], crs=t["crs"])
    assert len(regular) == len(plain) and regular.crs == t["crs"]
    vertices = lambda gdf: sum(len(g.exterior.coords) for g in gdf.geometry.explode())  # noqa: E731
    assert vertices(regular) < vertices(plain) / 5  # the pixel staircase is gone
    assert object_f1(regular, t["grown"])["f1"] >= 0.95


@pytest.mark.parametrize("threshold, boundary_threshold, min_area, erosion",
                         [(0.5, 0.5, 0.0, 0), (0.3, 0.6, 20.0, 1), (0.7, 0.3, 5.0, 2)])
def test_object_counts_on_labels_equal_object_f1_on_polygons(touching, threshold, boundary_threshold,
                                                             min_area, erosion):
    """tune_footprints scores label rasters (fast); the counts must be those of the polygons."""
    from toolkit.vector import footprint_labels

    t = touching
    truth_labels = footprint_labels(t["label"][None], boundary_class=2)
    truth = vectorize(t["label"][None], boundary_class=2, transform=t["transform"], crs=t["crs"])
    settings = {"threshold": threshold, "boundary_threshold": boundary_threshold, "marker_erosion": erosion}
    found = footprint_labels(t["scores"], boundary_band=1, **settings)
    polygons = vectorize(t["scores"], boundary_band=1, min_area=min_area, transform=t["transform"],
                         crs=t["crs"], **settings)
    pixel_area = abs(t["transform"].a * t["transform"].e)
    tp, fp, fn = object_counts(found, truth_labels, min_pixels=int(np.ceil(min_area / pixel_area)))
    expected = object_f1(polygons, truth)
    assert (tp, fp, fn) == (expected["tp"], expected["fp"], expected["fn"])
    assert tp > 0


def test_object_counts_by_hand():
    truth = np.zeros((6, 6), int)
    truth[:3, :3], truth[4:, 4:] = 1, 2
    pred = np.zeros((6, 6), int)
    pred[:3, :2] = 5   # IoU 6/9 with truth 1: a match
    pred[4:, 5:] = 7   # IoU 2/4 with truth 2: a match at >= 0.5
    pred[0, 5] = 9     # one pixel, nothing true there
    assert object_counts(pred, truth) == (2, 1, 0)
    assert object_counts(pred, truth, iou_threshold=0.6) == (1, 2, 1)
    assert object_counts(pred, truth, min_pixels=3) == (1, 0, 1)  # the small ones are dropped
    assert object_counts(np.zeros_like(truth), truth) == (0, 0, 2)


def test_invalid_rings_from_openstreetmap_are_repaired_not_a_crash(banepa, tmp_path):
    """A self-crossing ring, as OpenStreetMap holds (two corners of a real Banepa building
    swapped), made footprint_scores stop with GEOSException 'side location conflict' when
    scoring inside an area; now it is repaired (shapely.make_valid), with a warning."""
    from shapely.geometry import Polygon

    from toolkit import write_vector
    from toolkit.data.split import split_scene
    from toolkit.raster import write_raster

    truth = gpd.read_file(banepa["footprints"])
    split = split_scene(banepa["image"])
    with rasterio.open(banepa["image"]) as src:
        transform, shape, crs = src.transform, (src.height, src.width), src.crs
    mask = rasterio.features.rasterize(((g, 1) for g in truth.geometry), out_shape=shape, transform=transform)
    prediction = tmp_path / "prediction.tif"
    write_raster(prediction, mask[np.newaxis].astype(np.float32), transform=transform, crs=crs, nodata=None)
    east = truth[truth.intersects(split.held_out)]
    i = next(j for j in east.index if len(truth.geometry[j].geoms[0].exterior.coords) >= 5)
    c = list(truth.geometry[i].geoms[0].exterior.coords)[:-1]
    broken = truth.copy()
    broken.loc[i, "geometry"] = Polygon([c[0], c[2], c[1], c[3], *c[4:]])
    assert not broken.geometry[i].is_valid
    with pytest.warns(UserWarning, match="footprint_scores: truth: 1 invalid polygon"):
        scores = footprint_scores(prediction, truth, broken, area=split.held_out)
    assert scores["object"]["f1"] > 0.99 and scores["pixel"]["iou"] > 0.95
    with pytest.warns(UserWarning, match="1 invalid polygon"):
        written = write_vector(broken, tmp_path / "repaired.gpkg")
    assert gpd.read_file(written).geometry.is_valid.all()
