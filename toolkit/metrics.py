"""Scores for image translation (PSNR, SSIM) and for footprints: pixel IoU / F1 / precision /
recall, and object F1 as the SpaceNet building challenge scores it.

Plain numpy, rasters or GeoDataFrames in; plain floats out.

Layer: data.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["Scores", "confusion", "footprint_scores", "object_counts", "object_f1", "pixel_scores", "psnr",
           "scores_from_confusion", "sharpness", "ssim"]


class Scores(dict):
    """The scores ``compute_metrics`` returns: a dict of floats under the toolkit's lower-case
    names (``psnr``, ``ssim``...), read under arcgis.learn's names too (``scores["PSNR"]``:
    keys are looked up without regard to case). Scores arcgis.learn gives that the toolkit does
    not compute (``FID``: it needs ImageNet-trained Inception weights, which the toolkit never
    downloads) raise a ``KeyError`` that says so."""

    NOT_COMPUTED = {"fid": "FID needs ImageNet-trained Inception-v3 weights, which the toolkit never downloads"}

    def __getitem__(self, key):
        return super().__getitem__(key.lower() if isinstance(key, str) else key)

    def __contains__(self, key) -> bool:
        return super().__contains__(key.lower() if isinstance(key, str) else key)

    def get(self, key, default=None):
        return super().get(key.lower() if isinstance(key, str) else key, default)

    def __missing__(self, key):
        reason = self.NOT_COMPUTED.get(str(key).split("_")[0])
        raise KeyError(f"{key!r}: not computed ({reason})." if reason else key)


def psnr(pred: np.ndarray, target: np.ndarray, data_range: float) -> float:
    """Peak signal-to-noise ratio in dB, from the mean squared error over all values:
    ``10 log10(data_range**2 / MSE)``; infinite for identical arrays."""
    mse = float(np.mean((np.asarray(pred, np.float64) - np.asarray(target, np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(data_range**2 / mse))


def ssim(pred: np.ndarray, target: np.ndarray, data_range: float) -> float:
    """Structural similarity of two ``(bands, h, w)`` images: the mean over bands of
    scikit-image's SSIM (7x7 Gaussian-free window, as Wang et al.)."""
    from skimage.metrics import structural_similarity

    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    size = min(7, *pred.shape[-2:])
    size -= 1 - size % 2  # an odd window that fits
    return float(np.mean([structural_similarity(p, t, data_range=data_range, win_size=size)
                          for p, t in zip(pred.reshape(-1, *pred.shape[-2:]),
                                          target.reshape(-1, *target.shape[-2:]))]))


def sharpness(image: np.ndarray) -> float:
    """The variance of the Laplacian of ``(bands, h, w)`` (or ``(h, w)``), averaged over the
    bands: how much fine detail an image holds (blur lowers it). Compare a prediction's with its
    target's: a ratio near 1 is as sharp as the real image, well below 1 blurrier."""
    import cv2

    bands = np.asarray(image, dtype=np.float64)
    bands = bands[np.newaxis] if bands.ndim == 2 else bands
    return float(np.mean([cv2.Laplacian(np.nan_to_num(b), cv2.CV_64F).var() for b in bands]))


def confusion(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """``[tp, fp, fn, tn]`` of two boolean masks of the same shape."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    if pred.shape != truth.shape:
        raise ValueError(f"masks differ in shape: {pred.shape} and {truth.shape}.")
    tp = int(np.count_nonzero(pred & truth))
    fp = int(np.count_nonzero(pred & ~truth))
    fn = int(np.count_nonzero(~pred & truth))
    return np.array([tp, fp, fn, pred.size - tp - fp - fn], dtype=np.int64)


def scores_from_confusion(counts) -> dict[str, float]:
    """IoU, F1, precision, recall and accuracy from ``[tp, fp, fn, tn]``.

    Where a ratio has nothing to count (no prediction, no truth) it is 1.0 when prediction and
    truth agree that there is nothing, and 0.0 otherwise.
    """
    tp, fp, fn, tn = (int(c) for c in counts)
    nothing = tp + fp + fn == 0  # both empty: a perfect answer

    def ratio(num, den):
        return num / den if den else (1.0 if nothing else 0.0)

    return {"iou": ratio(tp, tp + fp + fn), "f1": ratio(2 * tp, 2 * tp + fp + fn),
            "precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn),
            "accuracy": (tp + tn) / max(tp + fp + fn + tn, 1)}


def pixel_scores(pred, truth, threshold: float = 0.5) -> dict[str, float]:
    """Pixel scores of a predicted footprint mask against the truth: iou, f1, precision, recall,
    accuracy.

    ``pred`` and ``truth`` are boolean arrays, or score / class arrays or raster paths made into
    masks by :func:`toolkit.vector.footprint_mask` (highest band >= ``threshold``; nodata is
    background). Rasters must lie on the same grid.
    """
    return scores_from_confusion(confusion(*_masks_on_one_grid(pred, truth, threshold)))


def _masks_on_one_grid(pred, truth, threshold):
    from toolkit.vector import footprint_mask

    grids, masks = [], []
    for source in (pred, truth):
        if isinstance(source, (str, os.PathLike)):
            import rasterio

            with rasterio.open(source) as src:
                masks.append(footprint_mask(src.read(), threshold, src.nodata))
                grids.append((src.crs, src.transform, source))
        else:
            array = np.asarray(source)
            masks.append(array if array.dtype == bool else footprint_mask(array, threshold))
    if len(grids) == 2 and (grids[0][0] != grids[1][0] or not grids[0][1].almost_equals(grids[1][1])):
        raise ValueError(f"{grids[0][2]} and {grids[1][2]} lie on different grids (CRS or transform); "
                         "resample one onto the other first.")
    return masks


def object_f1(pred_polygons, truth_polygons, iou_threshold: float = 0.5) -> dict[str, float]:
    """Object-level scores as the SpaceNet building challenge computes them.

    Predicted and true polygons are matched one to one: pairs are taken in order of decreasing
    IoU, each polygon at most once, and a pair with IoU >= ``iou_threshold`` is a true positive.
    Unmatched predictions are false positives, unmatched truths false negatives.

    Args:
        pred_polygons, truth_polygons: GeoDataFrames or GeoSeries; predictions are reprojected to
            the truth's CRS.

    Returns:
        ``{"f1", "precision", "recall", "tp", "fp", "fn"}``; with nothing predicted and nothing
        true, precision, recall and F1 are 1.
    """
    import shapely

    pred = _geometries(pred_polygons, truth_polygons)
    truth = _geometries(truth_polygons, None)
    pairs = []
    if len(pred) and len(truth):
        tree = shapely.STRtree(truth)
        p_idx, t_idx = tree.query(pred, predicate="intersects")
        inter = shapely.area(shapely.intersection(pred[p_idx], truth[t_idx]))
        # |A u B| = |A| + |B| - |A n B|: exact, and no GEOS union, which takes seconds a pair on
        # geometry collections (what clipping a polygon to an area can give)
        union = shapely.area(pred[p_idx]) + shapely.area(truth[t_idx]) - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        pairs = sorted(zip(iou, p_idx, t_idx), key=lambda t: -t[0])
    used_p, used_t = set(), set()
    for iou, i, j in pairs:
        if iou < iou_threshold:
            break
        if i in used_p or j in used_t:
            continue
        used_p.add(i)
        used_t.add(j)
    tp = len(used_p)
    fp, fn = len(pred) - tp, len(truth) - tp
    scores = scores_from_confusion([tp, fp, fn, 0])
    return {"f1": scores["f1"], "precision": scores["precision"], "recall": scores["recall"],
            "tp": tp, "fp": fp, "fn": fn}


def object_counts(pred_labels: np.ndarray, truth_labels: np.ndarray, iou_threshold: float = 0.5,
                  min_pixels: int = 0) -> tuple[int, int, int]:
    """``(tp, fp, fn)`` of :func:`object_f1` computed on label rasters instead of polygons: one
    integer label per object, 0 background, on one pixel grid. Predicted objects smaller than
    ``min_pixels`` are dropped first. The IoU of a pair is that of its pixel sets, which is the
    polygons' IoU for outlines traced along pixel edges, so the counts equal those of
    :func:`object_f1` on the vectorized labels, at a fraction of the cost (for tuning)."""
    pred = np.asarray(pred_labels, dtype=np.int64).ravel()
    truth = np.asarray(truth_labels, dtype=np.int64).ravel()
    pred_sizes = np.bincount(pred)
    truth_sizes = np.bincount(truth)
    pred_sizes[0] = truth_sizes[0] = 0
    kept = pred_sizes >= max(int(min_pixels), 1)
    n_pred, n_truth = int(kept.sum()), int((truth_sizes > 0).sum())
    both = (pred > 0) & (truth > 0) & kept[pred]
    tp = 0
    if both.any():
        pairs, inter = np.unique(pred[both] * len(truth_sizes) + truth[both], return_counts=True)
        p, t = pairs // len(truth_sizes), pairs % len(truth_sizes)
        iou = inter / (pred_sizes[p] + truth_sizes[t] - inter)
        used_p, used_t = set(), set()
        for k in np.argsort(-iou, kind="stable"):
            if iou[k] < iou_threshold:
                break
            if p[k] in used_p or t[k] in used_t:
                continue
            used_p.add(p[k])
            used_t.add(t[k])
        tp = len(used_p)
    return tp, n_pred - tp, n_truth - tp


def _geometries(polygons, like) -> np.ndarray:
    """Valid, non-empty geometries as an array; reprojected to ``like``'s CRS when both have one."""
    import shapely

    series = getattr(polygons, "geometry", polygons)
    if like is not None:
        target = getattr(like, "crs", None)
        if target is not None and getattr(series, "crs", None) is not None and series.crs != target:
            series = series.to_crs(target)
    geoms = np.asarray(list(series), dtype=object)
    if len(geoms):
        geoms = shapely.make_valid(geoms)
        geoms = geoms[~shapely.is_empty(geoms)]
    return geoms


def footprint_scores(prediction: str | os.PathLike, footprints, truth, *, area=None,
                     threshold: float = 0.5, iou_threshold: float = 0.5) -> dict[str, dict]:
    """Pixel and object scores of predicted building footprints against true ones.

    Args:
        prediction: the mask / score / class raster the footprints came from.
        footprints: the predicted polygons (:func:`toolkit.vectorize` of ``prediction``).
        truth: the true polygons (any CRS; reprojected to the raster's).
        area: a shapely geometry in the raster's CRS (e.g. a held-out part of the scene): only
            pixels inside it count, and polygons are clipped to it.

    Returns:
        ``{"pixel": pixel_scores(...), "object": object_f1(...)}``.
    """
    import geopandas as gpd
    import rasterio
    import rasterio.features

    from toolkit.vector import footprint_mask, repair_polygons

    # real truth (OpenStreetMap) holds self-touching rings, which clipping cannot take
    footprints = repair_polygons(footprints, "footprint_scores: footprints")
    truth = repair_polygons(truth, "footprint_scores: truth")
    with rasterio.open(prediction) as src:
        predicted = footprint_mask(src.read(), threshold, src.nodata)
        transform, shape, crs = src.transform, (src.height, src.width), src.crs
    truth = truth.to_crs(crs) if crs is not None and truth.crs is not None else truth
    true_mask = np.zeros(shape, bool)
    if len(truth):
        true_mask = rasterio.features.rasterize(((g, 1) for g in truth.geometry), out_shape=shape,
                                                transform=transform).astype(bool)
    inside = np.ones(shape, bool)
    if area is not None:
        inside = rasterio.features.rasterize([(area, 1)], out_shape=shape, transform=transform).astype(bool)
        clip = gpd.GeoDataFrame(geometry=[area], crs=crs)
        # keep_geom_type: a polygon cut at the area's edge stays a polygon, without line slivers
        footprints = gpd.clip(footprints, clip, keep_geom_type=True)
        truth = gpd.clip(truth, clip, keep_geom_type=True)
    return {"pixel": scores_from_confusion(confusion(predicted[inside], true_mask[inside])),
            "object": object_f1(footprints, truth, iou_threshold)}
