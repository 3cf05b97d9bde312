"""prepare_data: a chip folder -> fastai DataLoaders, with the numbers right."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from toolkit import viz
from toolkit._fastai import quiet_import
from toolkit._args import size_pair
from toolkit.data.dataset import ChipPairDataset, read_pair
from toolkit.data.layouts import CLASSIFIED_TILES, ChipFolder, ChipPair, index_folder
from toolkit.data.normalization import BandNorm, MaskEncoding
from toolkit.stats import BandStatistics

with quiet_import():
    from fastai.data.core import DataLoaders, TfmdDL
    from fastai.torch_core import default_device

__all__ = ["ChipDataLoaders", "default_num_workers", "prepare_data"]

_KWARGS = {"direction", "rgb_bands", "extract_bands"}


def default_num_workers() -> int:
    """Loader processes for this machine: none on 2 cores or fewer, where a worker competes with
    training for the same cores (benchmarks/README.md), else one per core but one, up to 8."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 0 if cpus <= 2 else min(8, cpus - 1)


class ChipDataLoaders(DataLoaders):
    """fastai ``DataLoaders`` over a chip folder, with what the models and figures need to know.

    Batches are ``(input, target)``: float32 ``(batch, bands, h, w)`` in [-1, 1].
    """

    def __init__(self, train: TfmdDL, valid: TfmdDL, *, folder: ChipFolder, input_norm: BandNorm,
                 target_norm: BandNorm | MaskEncoding, chip_size: tuple[int, int],
                 resized: tuple[int, int] | None = None, rgb_bands: Sequence[int] | None = None,
                 device=None) -> None:
        super().__init__(train, valid, path=folder.path, device=device)
        self._resized = resized or (folder.input_header.width, folder.input_header.height)
        self.folder = folder
        self.input_norm = input_norm
        self.target_norm = target_norm
        self._chip_size = chip_size
        self.rgb_bands = list(rgb_bands) if rgb_bands is not None else None

    @property
    def dataset_type(self) -> str:
        """``"Pix2Pix"`` (image -> image) or ``"Classified_Tiles"`` (image -> class mask)."""
        return self.folder.dataset_type

    @property
    def chip_size(self) -> int | tuple[int, int]:
        """Size of the chips the model sees: ``n`` for square chips, else ``(width, height)``."""
        w, h = self._chip_size
        return w if w == h else (w, h)

    @property
    def cell_size(self) -> tuple[float, float] | None:
        """Ground size of a pixel as the model sees it (after ``resize_to``), in CRS units;
        None for chips without georeference."""
        native = self.folder.cell_size
        if native is None:
            return None
        header = self.folder.input_header
        return (native[0] * header.width / self._resized[0], native[1] * header.height / self._resized[1])

    @property
    def n_bands_in(self) -> int:
        return self.input_norm.n_bands

    @property
    def n_bands_out(self) -> int:
        return self.target_norm.n_bands

    @property
    def classes(self) -> list[dict]:
        """Classified_Tiles: ``[{"Value", "Name", "Color"}]``; empty for image targets."""
        return list(self.target_norm.classes) if isinstance(self.target_norm, MaskEncoding) else []

    def use_normalization(self, input_norm: BandNorm, target_norm: BandNorm | MaskEncoding) -> None:
        """Scale this data's chips with other statistics from now on (a saved model's, for
        fine-tuning), in training and validation alike. Band counts and classes must match."""
        if input_norm.n_bands != self.n_bands_in or target_norm.n_bands != self.n_bands_out:
            raise ValueError(f"{self.path}: the data has {self.n_bands_in} -> {self.n_bands_out} bands, "
                             f"the statistics {input_norm.n_bands} -> {target_norm.n_bands}.")
        if isinstance(target_norm, MaskEncoding) != isinstance(self.target_norm, MaskEncoding) or (
                isinstance(target_norm, MaskEncoding) and target_norm.values != self.target_norm.values):
            raise ValueError(f"{self.path}: the data's target ({self.target_norm.to_dict().get('kind')}, "
                             f"classes {[c['Value'] for c in self.classes]}) does not match the model's "
                             f"({target_norm.to_dict().get('kind')}"
                             + (f", classes {target_norm.values}" if isinstance(target_norm, MaskEncoding) else "")
                             + ").")
        self.input_norm, self.target_norm = input_norm, target_norm
        for ds in (self.train_ds, self.valid_ds):
            ds.input_norm, ds.target_norm = input_norm, target_norm

    @property
    def stats(self) -> dict:
        """Per-band statistics of input and target as a plain, JSON-serialisable dict."""
        return {"input": self.input_norm.to_dict(), "target": self.target_norm.to_dict()}

    def __repr__(self) -> str:
        return (f"ChipDataLoaders({self.dataset_type}, {self.folder.layout} layout at {self.path}: "
                f"{len(self.train_ds)} train / {len(self.valid_ds)} valid chips of "
                f"{self._chip_size[0]}x{self._chip_size[1]} px, {self.n_bands_in} -> "
                f"{self.n_bands_out} bands)")

    def show_batch(self, rows: int = 4, rgb_bands: Sequence[int] | None = None, **kwargs) -> Figure:
        """Input / Target columns for ``rows`` training samples, as the model sees them
        (augmented); returns the matplotlib figure."""
        xs, ys = [], []
        for x, y in self.train:
            xs.extend(x.cpu().numpy())
            ys.extend(y.cpu().numpy())
            if len(xs) >= rows:
                break
        rgb = rgb_bands if rgb_bands is not None else self.rgb_bands
        columns = {"Input": [viz.to_display(x, rgb) for x in xs[:rows]],
                   "Target": [self.display_target(y) for y in ys[:rows]]}
        return viz.show_grid(columns, **kwargs)

    def display_target(self, y: np.ndarray) -> np.ndarray:
        """A target ``(bands, h, w)`` in [-1, 1] as a picture: class colours or stretched bands."""
        if isinstance(self.target_norm, MaskEncoding):
            return viz.mask_to_rgb(self.target_norm.decode(y), self.classes)
        return viz.to_display(y)


def prepare_data(
    path: str | os.PathLike,
    *,
    batch_size: int = 8,
    val_split_pct: float = 0.1,
    seed: int = 42,
    dataset_type: str | None = None,
    chip_size: int | tuple[int, int] | None = None,
    resize_to: int | tuple[int, int] | None = None,
    transforms=None,
    norm_pct: float = 1.0,
    num_workers: int | None = None,
    **kwargs,
) -> ChipDataLoaders:
    """Read a chip folder into fastai DataLoaders of ``(input, target)`` batches in [-1, 1].

    Args:
        path: a chip folder in any layout of :mod:`toolkit.data.layouts` (ArcGIS Export_Tiles or
            Classified_Tiles, ``Images/train_a`` + ``train_b``, or side-by-side A|B images).
        batch_size: chips per batch.
        val_split_pct: share of the chips held out for validation (side-by-side folders with a
            ``val/`` folder use it instead).
        seed: seed of the train/validation split and of the statistics sample; the same seed
            gives the same split.
        dataset_type: ``"Pix2Pix"`` or ``"Classified_Tiles"``; detected from the folder by default.
        chip_size: crop chips to this size (random crops when training, centred for validation).
        resize_to: resize chips to this size first (bilinear; nearest for labels).
        transforms: ``None``: random flips and 90-degree rotations, the same for input and target,
            on the training set only. ``False``: none. A list of fastai batch transforms (e.g.
            ``[Flip(), Rotate()]``): applied instead, to input and target together, training only.
        norm_pct: share of the training chips (a seeded sample) that the per-band statistics are
            computed from, when the folder's .emd does not hold them (``AllTilesStats``).
        num_workers: loader processes; default :func:`default_num_workers`.
        **kwargs: ``direction="AtoB"|"BtoA"`` (side-by-side folders), ``rgb_bands`` (default
            bands for figures), ``extract_bands`` (0-based input bands to keep).

    Returns:
        :class:`ChipDataLoaders`, a fastai ``DataLoaders``. Nothing is written into ``path``.
    """
    unknown = set(kwargs) - _KWARGS
    if unknown:
        raise TypeError(f"prepare_data() got unexpected keyword argument(s) {sorted(unknown)}; "
                        f"accepted besides the named ones: {sorted(_KWARGS)}.")
    if not 0.0 <= val_split_pct < 1.0:
        raise ValueError(f"val_split_pct must lie in [0, 1), got {val_split_pct}.")
    if not 0.0 < norm_pct <= 1.0:
        raise ValueError(f"norm_pct must lie in (0, 1], got {norm_pct}.")
    if num_workers is not None and num_workers < 0:
        raise ValueError(f"num_workers must be 0 or more, got {num_workers}.")
    folder = index_folder(path, dataset_type=dataset_type, direction=kwargs.get("direction", "AtoB"))
    extract_bands = _extract_bands(kwargs.get("extract_bands"), folder.input_header.bands)
    train_pairs, valid_pairs = split_pairs(folder, val_split_pct, seed)

    input_norm, target_norm = _norms(folder, train_pairs, valid_pairs, norm_pct, seed, extract_bands)
    size = (folder.input_header.width, folder.input_header.height)
    resize = size_pair(resize_to, "resize_to") if resize_to is not None else None
    size = resize or size
    crop = size_pair(chip_size, "chip_size") if chip_size is not None else None
    if crop is not None and (crop[0] > size[0] or crop[1] > size[1]):
        raise ValueError(f"chip_size {crop} is larger than the chips of {folder.path} ({size[0]}x{size[1]} px"
                         f"{' after resize_to' if resize else ''}).")

    augment = transforms is None
    batch_tfms = list(transforms) if transforms not in (None, False) else []

    def dataset(pairs: list[ChipPair], train: bool) -> ChipPairDataset:
        return ChipPairDataset(pairs, input_norm=input_norm, target_norm=target_norm, train=train,
                               augment=augment, resize_to=resize, chip_size=crop,
                               extract_bands=extract_bands)

    workers = default_num_workers() if num_workers is None else num_workers
    device = default_device()
    train_dl = TfmdDL(dataset(train_pairs, True), bs=batch_size, shuffle=True, num_workers=workers,
                      after_batch=batch_tfms, device=device)
    valid_dl = TfmdDL(dataset(valid_pairs, False), bs=batch_size, shuffle=False, num_workers=workers,
                      after_batch=batch_tfms, device=device)
    return ChipDataLoaders(train_dl, valid_dl, folder=folder, input_norm=input_norm,
                           target_norm=target_norm, chip_size=crop or size, resized=size,
                           rgb_bands=kwargs.get("rgb_bands"), device=device)


def split_pairs(folder: ChipFolder, val_split_pct: float, seed: int) -> tuple[list[ChipPair], list[ChipPair]]:
    """The seeded train/validation split (pairs sorted by name first, so listing order does not
    matter). A folder with its own validation set (side by side ``val/``) keeps it."""
    pairs = sorted(folder.pairs, key=lambda p: p.name)
    if folder.valid_pairs:
        train, valid = pairs, sorted(folder.valid_pairs, key=lambda p: p.name)
    else:
        order = np.random.default_rng(seed).permutation(len(pairs))
        n_valid = int(round(len(pairs) * val_split_pct))
        if val_split_pct > 0:
            n_valid = max(n_valid, 1)
        valid = [pairs[i] for i in sorted(order[:n_valid])]
        train = [pairs[i] for i in sorted(order[n_valid:])]
    for name, subset in (("training", train), ("validation", valid)):
        if not subset:
            raise ValueError(f"{folder.path}: the {name} set is empty after the split ({len(pairs)} "
                             f"chips, val_split_pct={val_split_pct}); add chips or change val_split_pct.")
    return train, valid


def _norms(folder: ChipFolder, train: list[ChipPair], valid: list[ChipPair], norm_pct: float,
           seed: int, extract_bands: list[int] | None):
    """Input statistics and the target's normalisation or class encoding."""
    is_mask = folder.dataset_type == CLASSIFIED_TILES
    input_stats = folder.input_stats
    if input_stats is not None and len(input_stats) != folder.input_header.bands:
        warnings.warn(f"{folder.path}: the .emd AllTilesStats has {len(input_stats)} bands, the chips "
                      f"{folder.input_header.bands}; computing statistics from the chips instead.")
        input_stats = None
    target_stats = folder.target_stats
    if target_stats is not None and len(target_stats) != folder.target_header.bands:
        target_stats = None
    for key, stats in (("AllTilesStats", input_stats), ("AllTilesStats2", target_stats)):
        if stats is not None and not _finite_stats(stats):
            warnings.warn(f"{folder.path}: the .emd {key} holds missing or non-finite statistics "
                          "(an export of a raster with NaN or infinite pixels); computing them from "
                          "the chips' finite values instead.")
            if key == "AllTilesStats":
                input_stats = None
            else:
                target_stats = None

    need_input, need_target = input_stats is None, (not is_mask and target_stats is None)
    computed = _chip_statistics(folder, train, norm_pct, seed, extract_bands, need_input, need_target)
    names = folder.band_names if folder.band_names and len(folder.band_names) == folder.input_header.bands else None
    if input_stats is not None:
        selected = [input_stats[b] for b in extract_bands] if extract_bands else input_stats
        input_norm = BandNorm.from_esri(selected, source=f"AllTilesStats of {folder.path / 'esri_model_definition.emd'}")
    else:
        if names and extract_bands:
            names = [names[b] for b in extract_bands]
        input_norm = BandNorm.from_statistics(computed["input"], computed["source"], names)
    if is_mask:
        classes = folder.classes or _classes_from_labels(train + valid)
        return input_norm, MaskEncoding(classes)
    if target_stats is not None:
        return input_norm, BandNorm.from_esri(target_stats, source=f"AllTilesStats2 of {folder.path / 'esri_model_definition.emd'}")
    return input_norm, BandNorm.from_statistics(computed["target"], computed["source"])


def _finite_stats(stats) -> bool:
    """True when every band of an .emd statistics list has finite Min, Max, Mean and StdDev."""
    try:
        return all(np.isfinite(float(b[k])) for b in stats for k in ("Min", "Max", "Mean", "StdDev"))
    except (TypeError, ValueError, KeyError):
        return False


def _chip_statistics(folder, train, norm_pct, seed, extract_bands, need_input, need_target) -> dict:
    if not (need_input or need_target):
        return {}
    n = max(1, int(round(len(train) * norm_pct)))
    sample = sorted(np.random.default_rng(seed).choice(len(train), size=n, replace=False))
    bands_in = len(extract_bands) if extract_bands else folder.input_header.bands
    stats_in, stats_out = BandStatistics(bands_in), BandStatistics(folder.target_header.bands)
    for i in sample:
        x, x_valid, y, y_valid = read_pair(train[i], extract_bands=extract_bands)
        if need_input:
            stats_in.update(x, x_valid)
        if need_target:
            stats_out.update(y, y_valid)
    return {"input": stats_in, "target": stats_out,
            "source": f"{n} of the {len(train)} training chips of {folder.path}"}


def _classes_from_labels(pairs: list[ChipPair]) -> list[dict]:
    """Classes of a folder without metadata: every non-zero label value found."""
    values: set[int] = set()
    for pair in pairs:
        _, _, y, _ = read_pair(pair)
        values.update(int(v) for v in np.unique(y[0]) if v != 0)
    if not values:
        raise ValueError(f"{pairs[0].target.parent}: the labels hold no class (all 0) and the folder "
                         "has no .emd or stats file naming its classes.")
    return [{"Value": v, "Name": str(v), "Color": None} for v in sorted(values)]


def _extract_bands(bands, n_bands: int) -> list[int] | None:
    if bands is None:
        return None
    bands = [int(b) for b in bands]
    if not bands or not all(0 <= b < n_bands for b in bands):
        raise ValueError(f"extract_bands must list 0-based bands of the {n_bands} input bands, got {bands}.")
    return bands
