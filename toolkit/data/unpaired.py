"""Unpaired (CycleGAN) chip folders -> fastai DataLoaders of ``(a, b)`` batches.

    from toolkit import prepare_data
    data = prepare_data("chips")            # A/ + B/ or trainA/ + trainB/: detected
    a, b = data.one_batch()                 # a chip of domain A and one of domain B, in [-1, 1]
    data.show_batch(rows=4)

The two domains are two sets of chips that share nothing but their pixel size: each has its own
band count, dtype, nodata, statistics, chip count and (when georeferenced) CRS and cell size.

Formats, as the systems we match write and read them
----------------------------------------------------

arcgis.learn (ArcGIS API for Python 2.x) reads CycleGAN data as two complete export folders side
by side, one per raster (``prepare_data`` in ``arcgis/learn/_data.py``; ``cyclegan_paths``,
``folder_check_cyclegan``, ``prepare_data_ms_cyclegan`` and ``_batch_stats_json`` in
``arcgis/learn/_utils/cyclegan.py``; read in the copy of the package at
https://github.com/Brian-Fairbanks/PandaReporting/blob/f654de5e7f0b2a78cb5ac75a96e83153d67a3523/arcgis/learn/_utils/cyclegan.py
and https://github.com/Brian-Fairbanks/PandaReporting/blob/12b9dbe1d00537837c6940501360ada993074a64/arcgis/learn/_data.py)::

    <folder>/
      A/images/000000000.tif  A/map.txt  A/esri_model_definition.emd  A/esri_accumulated_stats.json
      B/images/000000000.tif  B/map.txt  B/esri_model_definition.emd  B/esri_accumulated_stats.json

- Without ``dataset_type`` it picks ``"CycleGAN"`` when the folder itself holds no export files
  and both ``A/`` and ``B/`` do (``_check_esri_files(path / "A") and _check_esri_files(path /
  "B")``); the hand-made ``Images/train_a`` + ``Images/train_b`` is read as CycleGAN when asked.
- Each domain's statistics are the ``AllTilesStats`` of the ``.emd`` beside its ``images/``
  (``A/esri_model_definition.emd`` for A, ``B/...`` for B), else computed from its chips, then
  cached by writing ``esri_normalization_stats_a.json`` / ``_b.json`` into the data folder (we
  never write there).
- Chip counts may differ: item ``i`` is A chip ``i`` and a B chip drawn at random, in training
  and validation alike; the split (``split_by_rand_pct``) is over A only. The domain with fewer
  bands is padded by repeating its last band (here each domain keeps its own band count).
- A saved model's ``.emd`` holds ``ModelType "CycleGAN"``, ``ModelConfiguration "_cyclegan"``,
  ``n_intput_channel``, ``n_channel``, ``NormalizationStats`` (A) and ``NormalizationStats_b``
  (B) (``arcgis/learn/models/_cyclegan.py`` in the same copy).

ArcGIS Pro ("Export Training Data For Deep Learning") writes each of ``A/`` and ``B/``: Esri's
own CycleGAN walk-through exports each raster with the label-free Export Tiles format ("export
image chips of a defined size without requiring any labels", SAR to RGB Translation using
CycleGAN, https://www.esri.com/arcgis-blog/products/api-python/imagery/sar-to-rgb-translation-using-cyclegan/),
so each folder is that format's ``images/``, ``map.txt``, ``.emd`` (``AllTilesStats`` of its one
raster) and ``esri_accumulated_stats.json``. Recent Pro releases also offer a ``CycleGAN``
metadata format for the tool
(https://pro.arcgis.com/en/pro-app/latest/tool-reference/image-analyst/export-training-data-for-deep-learning.htm);
that page's text could not be retrieved here, so what it writes is not verified: the
``MetaDataMode: "CycleGAN"`` our export stamps in both folders, and reading ``images/`` +
``images2/`` exports whose ``MetaDataMode`` says CycleGAN as two domains, are our choices.

The reference implementation (Zhu et al., ``junyanz/pytorch-CycleGAN-and-pix2pix``,
``data/unaligned_dataset.py``) reads ``trainA/`` + ``trainB/`` (``testA/`` + ``testB/`` for
testing) of plain pictures: its length is ``max(len(A), len(B))``, item ``i`` takes A chip
``i % len(A)`` and a random B chip (``serial_batches`` off).

What this module does
---------------------

- Training item ``i`` takes chip ``i % n`` of the larger domain and a random chip (torch's
  generator) of the other, so an epoch of ``max(nA, nB)`` items visits every chip of the larger
  domain; validation is deterministic (``a[i % nA], b[i % nB]``). Each domain is split into
  training and validation with the seeded split of paired folders.
- Augmentation (random crop to ``chip_size``, flip / 90-degree rotation) is drawn independently
  for ``a`` and ``b``: they show different places.
- ``test_pairs``: when ``testA/`` and ``testB/`` hold chips of the same names (true pairs: the
  same ground in both domains), a deterministic dataset of them, for PSNR/SSIM.

Layer: data (the package's layers, bottom to top: formats and I/O, data, inference core,
training, front doors). Built on :mod:`toolkit.data.folder_loaders` and
:mod:`toolkit.data.chip_stats`, which paired data share; below :mod:`toolkit.data.loaders`, whose
``prepare_data`` hands unpaired folders to :func:`unpaired_loaders`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from toolkit import viz
from toolkit._fastai import quiet_import
from toolkit.data.chip_stats import chip_statistics, usable_esri_stats
from toolkit.data.chips import read_header
from toolkit.data.dataset import crop, dihedral, read_image, resize_bands
from toolkit.data.folder_loaders import FolderDataLoaders, chip_sizes, loaders
from toolkit.data.layouts import CYCLEGAN, ChipDomain, UnpairedFolder
from toolkit.data.normalization import BandNorm
from toolkit.data.split import split_items
from toolkit.stats import check_band_coverage

with quiet_import():
    from fastai.data.core import TfmdDL
    from fastai.torch_core import TensorImage

__all__ = ["UnpairedDataLoaders", "UnpairedDataset", "domain_norm", "unpaired_loaders"]


class UnpairedDataset:
    """Map-style dataset of two domains: item ``i`` is ``(a, b)``, float32 ``TensorImage`` s
    ``(bands_a, h, w)`` and ``(bands_b, h, w)`` in [-1, 1].

    Training (``train=True``): ``max(nA, nB)`` items; item ``i`` takes chip ``i % n`` of the
    larger domain and a random chip of the other. Otherwise item ``i`` is ``a[i % nA],
    b[i % nB]``, so two name-aligned lists of equal length give true pairs.

    Each chip is normalised with its domain's statistics (nodata and NaN pixels become 0), then
    resized (``resize_to``, bilinear), cropped to ``chip_size`` (random when training, centred
    otherwise) and, for training with ``augment``, flipped / rotated; crop and flip are drawn for
    ``a`` and ``b`` independently. ``split_idx`` is 0 for training and 1 otherwise, as fastai
    transforms expect.
    """

    def __init__(self, chips_a: Sequence[Path], chips_b: Sequence[Path], *, norm_a: BandNorm,
                 norm_b: BandNorm, train: bool, augment: bool,
                 resize_to: tuple[int, int] | None = None,
                 chip_size: tuple[int, int] | None = None) -> None:
        self.chips_a, self.chips_b = list(chips_a), list(chips_b)
        self.norm_a, self.norm_b = norm_a, norm_b
        self.train = train
        self.augment = augment
        self.resize_to = resize_to
        self.chip_size = chip_size
        self.extract_bands = None  # every band of both domains: the attribute models read
        self.split_idx = 0 if train else 1

    input_norm = property(lambda self: self.norm_a, lambda self, norm: setattr(self, "norm_a", norm),
                          doc="Domain A's statistics (alias of ``norm_a``).")
    target_norm = property(lambda self: self.norm_b, lambda self, norm: setattr(self, "norm_b", norm),
                           doc="Domain B's statistics (alias of ``norm_b``).")

    def __len__(self) -> int:
        return max(len(self.chips_a), len(self.chips_b))

    def indices(self, i: int) -> tuple[int, int]:
        """The A and B chip indices of item ``i`` (random for the smaller domain in training)."""
        n_a, n_b = len(self.chips_a), len(self.chips_b)
        if not self.train:
            return i % n_a, i % n_b
        # torch's generator, not numpy's: DataLoader workers get distinct torch seeds.
        if n_a >= n_b:
            return i % n_a, int(torch.randint(0, n_b, ()))
        return int(torch.randint(0, n_a, ())), i % n_b

    def __getitem__(self, i: int) -> tuple[TensorImage, TensorImage]:
        if not 0 <= i < len(self):
            raise IndexError(f"item {i} of {len(self)}")
        ia, ib = self.indices(i)
        return self._chip(self.chips_a[ia], self.norm_a), self._chip(self.chips_b[ib], self.norm_b)

    def _chip(self, path: Path, norm: BandNorm) -> TensorImage:
        x, valid = read_image(path)
        check_band_coverage(valid, path)
        x = norm.normalize(x, valid)
        if self.resize_to is not None:
            x = resize_bands(x, self.resize_to)
        if self.chip_size is not None:
            (x,) = crop([x], self.chip_size, random=self.train)
        if self.train and self.augment:
            (x,) = dihedral(x)
        return TensorImage(torch.from_numpy(np.ascontiguousarray(x)))


class UnpairedDataLoaders(FolderDataLoaders):
    """fastai ``DataLoaders`` over an unpaired folder: batches ``(a, b)``, float32
    ``(batch, bands_a, h, w)`` and ``(batch, bands_b, h, w)`` in [-1, 1].

    ``norm_a`` / ``norm_b`` (aliases ``input_norm`` / ``target_norm``) hold each domain's band
    statistics; ``test_pairs`` is a dataset of true pairs for scoring, or None.
    """

    dataset_type = CYCLEGAN

    def __init__(self, train: TfmdDL, valid: TfmdDL, *, folder: UnpairedFolder, norm_a: BandNorm,
                 norm_b: BandNorm, chip_size: tuple[int, int], resized: tuple[int, int] | None = None,
                 test_pairs: UnpairedDataset | None = None, rgb_bands: Sequence[int] | None = None,
                 device=None) -> None:
        super().__init__(train, valid, folder=folder, chip_size=chip_size, resized=resized,
                         rgb_bands=rgb_bands, device=device)
        self.norm_a, self.norm_b = norm_a, norm_b
        self.test_pairs = test_pairs
        self.rgb_bands_b: list[int] | None = None  # domain B's bands for figures (rgb_bands: A's)

    input_norm = UnpairedDataset.input_norm
    target_norm = UnpairedDataset.target_norm

    n_bands_a = property(lambda self: self.norm_a.n_bands, doc="Band count of domain A.")
    n_bands_b = property(lambda self: self.norm_b.n_bands, doc="Band count of domain B.")
    n_bands_in = property(lambda self: self.n_bands_a, doc="Band count of domain A.")
    n_bands_out = property(lambda self: self.n_bands_b, doc="Band count of domain B.")

    @property
    def classes(self) -> list[str]:
        """Always empty: both domains are images (arcgis.learn's ``data.classes``)."""
        return []

    @property
    def class_mapping(self) -> dict[int, str]:
        """Always empty: both domains are images (arcgis.learn's ``data.class_mapping``)."""
        return {}

    @property
    def class_records(self) -> list[dict]:
        """Always empty: both domains are images."""
        return []

    @property
    def cell_size(self) -> tuple[float, float] | None:
        """Ground size of a domain A pixel as the model sees it (after ``resize_to``), in its
        CRS units; None for chips without georeference."""
        return self._domain_cell_size(self.folder.a)

    @property
    def cell_size_b(self) -> tuple[float, float] | None:
        """As :attr:`cell_size`, for domain B."""
        return self._domain_cell_size(self.folder.b)

    def _domain_cell_size(self, domain: ChipDomain) -> tuple[float, float] | None:
        if domain.cell_size is None:
            return None
        width, height = self._resized or (domain.header.width, domain.header.height)
        return (domain.cell_size[0] * domain.header.width / width,
                domain.cell_size[1] * domain.header.height / height)

    def use_normalization(self, norm_a: BandNorm, norm_b: BandNorm) -> None:
        """Scale both domains' chips with other statistics from now on (a saved model's, for
        fine-tuning), in training, validation and test pairs alike. Band counts must match."""
        for name, norm, n_bands in (("A", norm_a, self.n_bands_a), ("B", norm_b, self.n_bands_b)):
            if not isinstance(norm, BandNorm):
                raise ValueError(f"{self.path}: domain {name} holds images; its statistics must be a "
                                 f"BandNorm, got {type(norm).__name__}.")
            if norm.n_bands != n_bands:
                raise ValueError(f"{self.path}: domain {name} has {n_bands} band(s), the statistics "
                                 f"{norm.n_bands}.")
        self.norm_a, self.norm_b = norm_a, norm_b
        for ds in (self.train_ds, self.valid_ds, self.test_pairs):
            if ds is not None:
                ds.norm_a, ds.norm_b = norm_a, norm_b

    @property
    def stats(self) -> dict:
        """Per-band statistics of domain A (``"input"``) and B (``"target"``), JSON-serialisable."""
        return {"input": self.norm_a.to_dict(), "target": self.norm_b.to_dict()}

    def __repr__(self) -> str:
        def side(name: str, domain: ChipDomain, train: int, valid: int) -> str:
            return (f"{name}: {domain.header.bands} band(s) of {domain.header.dtype}, {train} train / "
                    f"{valid} valid chips")

        train, valid = self.train_ds, self.valid_ds
        tests = f", {len(self.test_pairs)} test pairs" if self.test_pairs is not None else ""
        return (f"UnpairedDataLoaders({self.dataset_type}, {self.folder.layout} layout at {self.path}: "
                f"{side('A', self.folder.a, len(train.chips_a), len(valid.chips_a))}; "
                f"{side('B', self.folder.b, len(train.chips_b), len(valid.chips_b))}; "
                f"{self._chip_size[0]}x{self._chip_size[1]} px{tests})")

    def show_batch(self, rows: int = 4, rgb_bands: Sequence[int] | None = None,
                   rgb_bands_b: Sequence[int] | None = None, **kwargs) -> Figure:
        """Domain A / Domain B columns of ``rows`` training samples as the model sees them
        (augmented, unpaired); ``rgb_bands`` picks A's bands to show, ``rgb_bands_b`` B's (default:
        the data's ``rgb_bands`` and ``rgb_bands_b``). Returns the matplotlib figure."""
        a_chips, b_chips = self._training_samples(rows)
        rgb_a = rgb_bands if rgb_bands is not None else self.rgb_bands
        rgb_b = rgb_bands_b if rgb_bands_b is not None else self.rgb_bands_b
        columns = {"Domain A": [viz.to_display(a, rgb_a) for a in a_chips],
                   "Domain B": [viz.to_display(b, rgb_b) for b in b_chips]}
        return viz.show_grid(columns, **kwargs)


def unpaired_loaders(folder: UnpairedFolder, *, batch_size: int, val_split_pct: float, seed: int,
                     chip_size, resize_to, transforms, norm_pct: float, num_workers: int | None,
                     rgb_bands: Sequence[int] | None = None,
                     collate_fn=None) -> UnpairedDataLoaders:
    """The DataLoaders of an indexed unpaired folder; :func:`~toolkit.data.loaders.prepare_data`
    (which checks the arguments) calls this with its own.

    Per domain: ``val_split_pct`` of its chips go to validation (seeded); its statistics come
    from its .emd (``AllTilesStats``) or from ``norm_pct`` of its training chips. Both domains'
    chips must have one pixel size after ``resize_to``. ``transforms=None`` augments each domain
    independently, ``False`` not at all; a list of fastai batch transforms is applied to both
    with one draw per batch. ``rgb_bands`` picks domain A's bands for figures; ``collate_fn``
    (a list of ``(a, b)`` samples -> a batch) replaces fastai's ``fa_collate``.
    """
    a, b = folder.a, folder.b
    resize, size, crop_size = _common_size(folder, resize_to, chip_size)
    train_a, valid_a = _split(a, val_split_pct, seed)
    train_b, valid_b = _split(b, val_split_pct, seed)
    norm_a = domain_norm(a, train_a, norm_pct=norm_pct, seed=seed)
    norm_b = domain_norm(b, train_b, norm_pct=norm_pct, seed=seed)
    augment = transforms is None

    def dataset(chips_a: list[Path], chips_b: list[Path], train: bool, crop_to=crop_size) -> UnpairedDataset:
        return UnpairedDataset(chips_a, chips_b, norm_a=norm_a, norm_b=norm_b, train=train,
                               augment=augment, resize_to=resize, chip_size=crop_to)

    test_pairs = None
    if folder.test_pairs:
        _check_test_size(folder, resize, crop_size or size)
        test_pairs = dataset([p.input for p in folder.test_pairs], [p.target for p in folder.test_pairs],
                             False, crop_to=crop_size or size)
    train_dl, valid_dl, device = loaders(dataset(train_a, train_b, True), dataset(valid_a, valid_b, False),
                                         batch_size=batch_size, num_workers=num_workers,
                                         transforms=transforms, collate_fn=collate_fn)
    return UnpairedDataLoaders(train_dl, valid_dl, folder=folder, norm_a=norm_a, norm_b=norm_b,
                               chip_size=crop_size or size, resized=size, test_pairs=test_pairs,
                               rgb_bands=rgb_bands, device=device)


def _common_size(folder: UnpairedFolder, resize_to, chip_size):
    """``(resize, size, crop)`` shared by both domains (see ``chip_sizes``); ``ValueError`` when
    their chips reach the model at different pixel sizes."""
    sizes = []
    for domain in (folder.a, folder.b):
        header = domain.header
        sizes.append(chip_sizes((header.width, header.height), resize_to, chip_size,
                                where=f"the chips of domain {domain.name} ({domain.folder})"))
    (resize, size_a, crop_size), (_, size_b, _) = sizes
    if size_a != size_b:
        raise ValueError(
            f"{folder.path}: the chips of domain A are {size_a[0]}x{size_a[1]} px ({folder.a.chips[0]}), "
            f"those of domain B {size_b[0]}x{size_b[1]} px ({folder.b.chips[0]}); both domains "
            "must reach the model at one pixel size: export them with one tile size, or pass resize_to.")
    return resize, size_a, crop_size


def _check_test_size(folder: UnpairedFolder, resize, size: tuple[int, int]) -> None:
    """Test pairs are centre-cropped to the model's chip size: they must be at least that large."""
    first = folder.test_pairs[0].input
    header = read_header(first)
    width, height = resize or (header.width, header.height)
    if width < size[0] or height < size[1]:
        raise ValueError(f"{first}: test chips of {width}x{height} px{' after resize_to' if resize else ''} "
                         f"are smaller than the {size[0]}x{size[1]} px chips the model sees.")


def _split(domain: ChipDomain, val_split_pct: float, seed: int) -> tuple[list[Path], list[Path]]:
    return split_items(domain.chips, val_split_pct, seed, key=lambda p: p.name,
                       where=f"{domain.folder} (domain {domain.name})")


def domain_norm(domain: ChipDomain, train_chips: Sequence[Path], *, norm_pct: float, seed: int) -> BandNorm:
    """A domain's statistics: its .emd's (``AllTilesStats``) when usable, else those of a seeded
    sample (``norm_pct``) of its training chips."""
    where = f"{domain.folder} (domain {domain.name})"
    esri_stats = usable_esri_stats(domain.stats, domain.header.bands, key=domain.stats_key,
                                   where=domain.emd or where)
    if esri_stats is not None:
        return BandNorm.from_esri(esri_stats, source=f"{domain.stats_key} of {domain.emd}")
    stats, source = chip_statistics(train_chips, domain.header.bands, norm_pct=norm_pct, seed=seed, where=where)
    return BandNorm.from_statistics(stats, source, domain.band_names)
