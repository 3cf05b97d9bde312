"""Band statistics of chip folders: the .emd's when usable, else a seeded sample of the chips.

Holds how the per-band statistics that scale chips to [-1, 1] are found: an export's
``AllTilesStats`` when they fit the chips (:func:`usable_esri_stats`), else those of a seeded
``norm_pct`` sample of the training chips (:func:`chip_statistics` for one unpaired domain,
:func:`folder_norms` for both sides of a paired folder, each pair read once), and the classes of
a paired folder whose metadata names none, read from its labels (:func:`classes_from_labels`).

Layer: data (the package's layers, bottom to top: formats and I/O, data, inference core,
training, front doors). Built on :mod:`toolkit.data.dataset` (chip reading),
:mod:`toolkit.data.normalization` and :mod:`toolkit.stats`; used by :mod:`toolkit.data.loaders`
(paired folders) and :mod:`toolkit.data.unpaired`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from toolkit import esri
from toolkit.data.dataset import read_image, read_pair
from toolkit.data.layouts import CLASSIFIED_TILES, ChipFolder, ChipPair
from toolkit.data.normalization import BandNorm, MaskEncoding
from toolkit.stats import BandStatistics

__all__ = ["chip_statistics", "classes_from_labels", "folder_norms", "statistics_sample", "usable_esri_stats"]


def usable_esri_stats(stats: list[dict] | None, n_bands: int, *, key: str, where,
                      warn_mismatch: bool = True) -> list[dict] | None:
    """An .emd statistics list (``key``: ``AllTilesStats``...) if it can normalise chips of
    ``n_bands`` bands: one finite entry per band. Else None, with a warning naming ``where``,
    so the statistics are computed from the chips instead."""
    if stats is None:
        return None
    if len(stats) != n_bands:
        if warn_mismatch:
            warnings.warn(f"{where}: the .emd {key} has {len(stats)} bands, the chips {n_bands}; "
                          "computing statistics from the chips instead.")
        return None
    if not _finite_stats(stats):
        warnings.warn(f"{where}: the .emd {key} holds missing or non-finite statistics "
                      "(an export of a raster with NaN or infinite pixels); computing them from "
                      "the chips' finite values instead.")
        return None
    return stats


def _finite_stats(stats) -> bool:
    """True when every band of an .emd statistics list has finite Min, Max, Mean and StdDev."""
    try:
        return all(np.isfinite(float(b[k])) for b in stats for k in ("Min", "Max", "Mean", "StdDev"))
    except (TypeError, ValueError, KeyError):
        return False


def statistics_sample(n: int, norm_pct: float, seed: int) -> list[int]:
    """Indices of the seeded sample of ``n`` training chips that statistics come from."""
    size = max(1, int(round(n * norm_pct)))
    return sorted(np.random.default_rng(seed).choice(n, size=size, replace=False))


def _sample_source(n_sample: int, n: int, where) -> str:
    return f"{n_sample} of the {n} training chips of {where}"


def chip_statistics(chips: Sequence[Path], n_bands: int, *, norm_pct: float, seed: int, where,
                    extract_bands: Sequence[int] | None = None) -> tuple[BandStatistics, str]:
    """Per-band statistics of the valid pixels of a seeded sample (``norm_pct``) of ``chips``
    (one domain's training chips), and a note of where they come from (``where`` names the set)."""
    sample = statistics_sample(len(chips), norm_pct, seed)
    stats = BandStatistics(len(extract_bands) if extract_bands else n_bands)
    for i in sample:
        stats.update(*read_image(chips[i], extract_bands=extract_bands))
    return stats, _sample_source(len(sample), len(chips), where)


def folder_norms(folder: ChipFolder, train: list[ChipPair], valid: list[ChipPair], norm_pct: float,
                 seed: int, extract_bands: list[int] | None):
    """A paired folder's input normalisation and its target's normalisation or class encoding:
    from its .emd statistics when usable, else from a seeded ``norm_pct`` sample of ``train``."""
    if folder.input_classes:
        return _label_to_image_norms(folder, train, valid, norm_pct, seed)
    is_mask = folder.dataset_type == CLASSIFIED_TILES
    input_stats = usable_esri_stats(folder.input_stats, folder.input_header.bands, key="AllTilesStats",
                                    where=folder.path)
    target_stats = usable_esri_stats(folder.target_stats, folder.target_header.bands, key="AllTilesStats2",
                                     where=folder.path, warn_mismatch=False)

    need_input, need_target = input_stats is None, (not is_mask and target_stats is None)
    computed = _chip_statistics(folder, train, norm_pct, seed, extract_bands, need_input, need_target)
    names = folder.band_names if folder.band_names and len(folder.band_names) == folder.input_header.bands else None
    if input_stats is not None:
        selected = [input_stats[b] for b in extract_bands] if extract_bands else input_stats
        input_norm = BandNorm.from_esri(selected, source=f"AllTilesStats of {folder.path / esri.EMD_FILE}")
    else:
        if names and extract_bands:
            names = [names[b] for b in extract_bands]
        input_norm = BandNorm.from_statistics(computed["input"], computed["source"], names)
    if is_mask:
        classes = folder.classes or classes_from_labels(train + valid)
        return input_norm, MaskEncoding(classes)
    if target_stats is not None:
        return input_norm, BandNorm.from_esri(target_stats, source=f"AllTilesStats2 of {folder.path / esri.EMD_FILE}")
    return input_norm, BandNorm.from_statistics(computed["target"], computed["source"])


def _label_to_image_norms(folder: ChipFolder, train: list[ChipPair], valid: list[ChipPair], norm_pct: float,
                          seed: int) -> tuple[MaskEncoding, BandNorm]:
    """Label-to-image: the input's classes (its one-hot encoding) and the target images' scaling
    (the export's AllTilesStats of its images, else a sample of the training chips)."""
    labels = [ChipPair(p.name, p.target, p.input) for p in train + valid]  # classes_from_labels reads targets
    encoding = MaskEncoding(folder.classes or classes_from_labels(labels))
    stats = usable_esri_stats(folder.target_stats, folder.target_header.bands, key="AllTilesStats",
                              where=folder.path)
    if stats is not None:
        return encoding, BandNorm.from_esri(stats, source=f"AllTilesStats of {folder.path / esri.EMD_FILE}")
    computed = _chip_statistics(folder, train, norm_pct, seed, None, False, True)
    return encoding, BandNorm.from_statistics(computed["target"], computed["source"])


def _chip_statistics(folder, train, norm_pct, seed, extract_bands, need_input, need_target) -> dict:
    """Input and target statistics of the training pairs, read once per pair."""
    if not (need_input or need_target):
        return {}
    sample = statistics_sample(len(train), norm_pct, seed)
    bands_in = len(extract_bands) if extract_bands else folder.input_header.bands
    stats_in, stats_out = BandStatistics(bands_in), BandStatistics(folder.target_header.bands)
    for i in sample:
        x, x_valid, y, y_valid = read_pair(train[i], extract_bands=extract_bands)
        if need_input:
            stats_in.update(x, x_valid)
        if need_target:
            stats_out.update(y, y_valid)
    return {"input": stats_in, "target": stats_out,
            "source": _sample_source(len(sample), len(train), folder.path)}


def classes_from_labels(pairs: list[ChipPair]) -> list[dict]:
    """Classes of a folder without metadata: every non-zero label value found."""
    values: set[int] = set()
    for pair in pairs:
        _, _, y, _ = read_pair(pair)
        values.update(int(v) for v in np.unique(y[0]) if v != 0)
    if not values:
        raise ValueError(f"{pairs[0].target.parent}: the labels hold no class (all 0) and the folder "
                         "has no .emd or stats file naming its classes.")
    return [{"Value": v, "Name": str(v), "Color": None} for v in sorted(values)]

