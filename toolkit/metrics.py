"""Scores for image translation (PSNR, SSIM, L1) and for masks (IoU, F1, precision, recall).

Plain numpy in, plain floats out.
"""

from __future__ import annotations

import numpy as np

__all__ = ["confusion", "psnr", "scores_from_confusion", "ssim", "pixel_scores"]


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


def pixel_scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Pixel scores of a binary mask ``pred`` against ``truth``: iou, f1, precision, recall, accuracy."""
    return scores_from_confusion(confusion(pred, truth))
