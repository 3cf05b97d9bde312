"""The toolkit's fastai DataLoaders over chip folders, and how their loaders are made.

Holds :class:`FolderDataLoaders`, what paired and unpaired data share (the indexed folder, the
chip size the model sees, figure bands); :class:`ChipDataLoaders`, the paired one (the unpaired
:class:`~toolkit.data.unpaired.UnpairedDataLoaders` lives beside its dataset); and what both
kinds are made with: :func:`loaders` (fastai ``TfmdDL`` s on this process's device),
:func:`chip_sizes` (the resize and crop sizes) and this machine's default batch size and loader
processes. :func:`~toolkit.data.loaders.prepare_data` puts them together.

Layer: data (the package's layers, bottom to top: formats and I/O, data, inference core,
training, front doors). Built on :mod:`toolkit.data.layouts`, :mod:`toolkit.data.normalization` and
fastai; below :mod:`toolkit.data.unpaired` and :mod:`toolkit.data.loaders`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from toolkit import viz
from toolkit._args import size_pair
from toolkit._fastai import quiet_import
from toolkit.ddp import local_device
from toolkit.data.layouts import ChipFolder
from toolkit.data.normalization import BandCounts, BandNorm, MaskEncoding

with quiet_import():
    from fastai.data.core import DataLoaders, TfmdDL

__all__ = ["ChipDataLoaders", "FolderDataLoaders", "chip_sizes", "default_batch_size", "default_num_workers",
           "loaders"]


def default_batch_size(device) -> int:
    """``batch_size=None`` (arcgis.learn estimates one from the GPU's memory): 8 on the CPU; on
    a GPU the largest power of two up to 64 that leaves about 1 GiB of its free memory per chip
    pair of 256 px in training (a rule of thumb for the paper's networks, not a measurement)."""
    import torch

    if getattr(device, "type", str(device)) != "cuda" or not torch.cuda.is_available():
        return 8
    free, _ = torch.cuda.mem_get_info(device)
    fits = max(1, int(free // 2**30) - 2)
    return min(64, 2 ** (fits.bit_length() - 1))


def default_num_workers() -> int:
    """Loader processes for this machine: none on 2 cores or fewer, where a worker competes with
    training for the same cores (benchmarks/README.md), else one per core but one, up to 8."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 0 if cpus <= 2 else min(8, cpus - 1)


class FolderDataLoaders(DataLoaders):
    """What the toolkit's DataLoaders share: the indexed ``folder`` they read (whose
    ``input_paths`` are never written into), the chip size the model sees, figure bands."""

    def __init__(self, train: TfmdDL, valid: TfmdDL, *, folder, chip_size: tuple[int, int],
                 resized: tuple[int, int] | None, rgb_bands: Sequence[int] | None, device) -> None:
        super().__init__(train, valid, path=folder.path, device=device)
        self.folder = folder
        self._chip_size = chip_size
        self._resized = resized  # chip size after resize_to, before any crop
        self.rgb_bands = list(rgb_bands) if rgb_bands is not None else None
        # arcgis.learn's working_dir: models trained on this data save under <working_dir>/models
        self.working_dir: Path | None = None
        # chips in neither set: across the edge of prepare_data's validation_area
        self.left_out: list = []

    @property
    def chip_size(self) -> int | tuple[int, int]:
        """Size of the chips the model sees: ``n`` for square chips, else ``(width, height)``."""
        w, h = self._chip_size
        return w if w == h else (w, h)

    def _training_samples(self, rows: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The first ``rows`` samples of training batches, as the model sees them (augmented)."""
        xs, ys = [], []
        for x, y in self.train:
            xs.extend(x.cpu().numpy())
            ys.extend(y.cpu().numpy())
            if len(xs) >= rows:
                break
        return xs[:rows], ys[:rows]


class ChipDataLoaders(BandCounts, FolderDataLoaders):
    """fastai ``DataLoaders`` over a chip folder, with what the models and figures need to know.

    Batches are ``(input, target)``: float32 ``(batch, bands, h, w)`` in [-1, 1].
    """

    def __init__(self, train: TfmdDL, valid: TfmdDL, *, folder: ChipFolder, input_norm: BandNorm,
                 target_norm: BandNorm | MaskEncoding, chip_size: tuple[int, int],
                 resized: tuple[int, int] | None = None, rgb_bands: Sequence[int] | None = None,
                 device=None) -> None:
        super().__init__(train, valid, folder=folder, chip_size=chip_size,
                         resized=resized or (folder.input_header.width, folder.input_header.height),
                         rgb_bands=rgb_bands, device=device)
        self.input_norm = input_norm
        self.target_norm = target_norm

    @property
    def dataset_type(self) -> str:
        """``"Pix2Pix"`` (image -> image) or ``"Classified_Tiles"`` (image -> class mask)."""
        return self.folder.dataset_type

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
    def class_records(self) -> list[dict]:
        """Classified_Tiles: the toolkit's class records ``[{"Value", "Name", "Color"}]``;
        empty for image targets."""
        return list(self.target_norm.classes) if isinstance(self.target_norm, MaskEncoding) else []

    @property
    def classes(self) -> list[str]:
        """Class names, as arcgis.learn gives them (Classified_Tiles); empty for image targets.
        The values and colours are in :attr:`class_records`."""
        return [str(c.get("Name", c["Value"])) for c in self.class_records]

    @property
    def class_mapping(self) -> dict[int, str]:
        """``{value: name}`` of the classes, as arcgis.learn's ``data.class_mapping``; empty for
        image targets."""
        return {int(c["Value"]): str(c.get("Name", c["Value"])) for c in self.class_records}

    def use_normalization(self, input_norm: BandNorm, target_norm: BandNorm | MaskEncoding) -> None:
        """Scale this data's chips with other statistics from now on (a saved model's, for
        fine-tuning), in training and validation alike. Band counts and classes must match."""
        if input_norm.n_bands != self.n_bands_in or target_norm.n_bands != self.n_bands_out:
            raise ValueError(f"{self.path}: the data has {self.n_bands_in} -> {self.n_bands_out} bands, "
                             f"the statistics {input_norm.n_bands} -> {target_norm.n_bands}.")
        if isinstance(target_norm, MaskEncoding) != isinstance(self.target_norm, MaskEncoding) or (
                isinstance(target_norm, MaskEncoding) and target_norm.values != self.target_norm.values):
            raise ValueError(f"{self.path}: the data's target ({self.target_norm.to_dict().get('kind')}, "
                             f"classes {[c['Value'] for c in self.class_records]}) does not match the model's "
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
                f"{len(self.train_ds)} train / {len(self.valid_ds)} valid chips"
                + (f" ({len(self.left_out)} across the validation area's edge left out)" if self.left_out else "")
                + " of "
                f"{self._chip_size[0]}x{self._chip_size[1]} px, {self.n_bands_in} -> "
                f"{self.n_bands_out} bands)")

    def show_batch(self, rows: int = 4, rgb_bands: Sequence[int] | None = None, **kwargs) -> Figure:
        """Input / Target columns for ``rows`` training samples, as the model sees them
        (augmented); returns the matplotlib figure."""
        xs, ys = self._training_samples(rows)
        rgb = rgb_bands if rgb_bands is not None else self.rgb_bands
        columns = {"Input": [viz.to_display(x, rgb) for x in xs],
                   "Target": [self.display_target(y) for y in ys]}
        return viz.show_grid(columns, **kwargs)

    def display_target(self, y: np.ndarray) -> np.ndarray:
        """A target ``(bands, h, w)`` in [-1, 1] as a picture: class colours or stretched bands."""
        if isinstance(self.target_norm, MaskEncoding):
            return viz.mask_to_rgb(self.target_norm.decode(y), self.class_records)
        return viz.to_display(y)


def chip_sizes(native: tuple[int, int], resize_to, chip_size, *, where: str):
    """``(resize, size, crop)`` as (width, height) pairs: the ``resize_to`` size (or None), the
    size chips have after it, and the ``chip_size`` crop (or None); ``ValueError`` when the crop
    is larger than the chips (``where`` names them)."""
    resize = size_pair(resize_to, "resize_to") if resize_to is not None else None
    size = resize or tuple(native)
    crop = size_pair(chip_size, "chip_size") if chip_size is not None else None
    if crop is not None and (crop[0] > size[0] or crop[1] > size[1]):
        raise ValueError(f"chip_size {crop} is larger than {where} ({size[0]}x{size[1]} px"
                         f"{' after resize_to' if resize else ''}).")
    return resize, size, crop


def loaders(train_ds, valid_ds, *, batch_size: int, num_workers: int | None, transforms,
            collate_fn: Callable | None = None):
    """fastai ``TfmdDL`` s over a training and a validation dataset, and the device they load to.

    A list of ``transforms`` becomes batch transforms (fastai skips them on validation);
    ``collate_fn`` (a list of samples -> a batch) replaces fastai's ``fa_collate``."""
    batch_tfms = list(transforms) if transforms not in (None, False) else []
    workers = default_num_workers() if num_workers is None else num_workers
    device = local_device()  # under torchrun with GPUs: this process's own GPU
    extra = {"create_batch": collate_fn} if collate_fn is not None else {}
    train_dl = TfmdDL(train_ds, bs=batch_size, shuffle=True, num_workers=workers,
                      after_batch=batch_tfms, device=device, **extra)
    valid_dl = TfmdDL(valid_ds, bs=batch_size, shuffle=False, num_workers=workers,
                      after_batch=batch_tfms, device=device, **extra)
    return train_dl, valid_dl, device

