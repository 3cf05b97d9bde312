"""prepare_data: a chip folder -> fastai DataLoaders, with the numbers right.

Holds the data package's front door, :func:`prepare_data`: it checks arcgis.learn's arguments
(accepting, with a warning, those that mean nothing here), reads a paired folder, or several
merged into one, into :class:`~toolkit.data.folder_loaders.ChipDataLoaders`, and hands an
unpaired (CycleGAN) folder to :func:`~toolkit.data.unpaired.unpaired_loaders`; with what only it
needs: merging folders, renaming classes, the default augmentation of masks.

Layer: data (the package's layers, bottom to top: formats and I/O, data, inference core,
training, front doors). The top of the data layer: above :mod:`toolkit.data.unpaired`,
:mod:`toolkit.data.folder_loaders` and :mod:`toolkit.data.chip_stats`, whose shared names it
re-exports (``ChipDataLoaders``, ``FolderDataLoaders``, ``loaders``, ``chip_statistics``...).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from toolkit.config import DataConfig
from toolkit.ddp import local_device
from toolkit.data.chip_stats import (chip_statistics, classes_from_labels, folder_norms, statistics_sample,
                                     usable_esri_stats)
from toolkit.data.dataset import ChipPairDataset
from toolkit.data.folder_loaders import (ChipDataLoaders, FolderDataLoaders, chip_sizes, default_batch_size,
                                         default_num_workers, loaders)
from toolkit.data.layouts import (CLASSIFIED_TILES, ChipFolder, ChipPair, index_folder, index_unpaired,
                                  unpaired_layout)
from toolkit.data.split import split_by_area, split_pairs
from toolkit.data.unpaired import UnpairedDataLoaders, unpaired_loaders

__all__ = ["ChipDataLoaders", "FolderDataLoaders", "default_num_workers", "prepare_data",
           # re-exported from the modules below, where they moved
           "chip_sizes", "chip_statistics", "default_batch_size", "loaders", "statistics_sample", "usable_esri_stats"]

# prepare_data's default extra augmentation of mask targets (Classified_Tiles): arcgis.learn's
# lighting; turns and zooms, which lift held-out footprint scores (benchmarks/README.md)
MASK_AUGMENTATION = {"max_lighting": 0.3, "max_rotate": 15.0, "max_zoom": 1.1}

# arcgis.learn's prepare_data keywords that mean nothing for these models here: accepted, with
# a warning of what they do in arcgis.learn and why they are ignored
IGNORED_ARCGIS_KWARGS = {
    "imagery_type": "names the imagery (e.g. 'ms', 'sentinel2') for arcgis.learn's band statistics and "
                    "display; here bands are read as they are (pick them with extract_bands= or bands=)",
    "stratify": "balances the classes of a classification split; here the split is a seeded random "
                "split of the chips, or by ground with validation_area=",
    "n_masks": "is the number of masks of arcgis.learn's SAM-style segmentation data",
    "downsample_factor": "downsamples point clouds and images of other dataset types; use resize_to=",
    "min_cell_size": "applies to arcgis.learn's object-tracking data",
    "chip_type": "applies to arcgis.learn's image-classification data",
    "timesteps_of_interest": "applies to arcgis.learn's time-series data",
    "channels_of_interest": "applies to arcgis.learn's time-series data",
    "lighting_transforms": "switches arcgis.learn's lighting augmentation; use max_lighting= (0: none)",
}


def prepare_data(
    path: str | os.PathLike | Sequence[str | os.PathLike],
    class_mapping: Mapping[int, str] | None = None,
    chip_size: int | tuple[int, int] | None = None,
    val_split_pct: float = 0.1,
    batch_size: int | None = 8,
    transforms=None,
    collate_fn: Callable | None = None,
    seed: int = 42,
    dataset_type: str | None = None,
    resize_to: int | tuple[int, int] | None = None,
    working_dir: str | os.PathLike | None = None,
    *,
    norm_pct: float = 1.0,
    num_workers: int | None = None,
    direction: str = "AtoB",
    rgb_bands: Sequence[int] | None = None,
    extract_bands: Sequence[int] | None = None,
    validation_area=None,
    max_lighting: float | None = None,
    max_rotate: float | None = None,
    max_zoom: float | None = None,
    **kwargs,
) -> ChipDataLoaders | UnpairedDataLoaders:
    """Read a chip folder into fastai DataLoaders of ``(input, target)`` batches in [-1, 1].

    The arguments up to ``working_dir`` are arcgis.learn's, in its order, so
    ``prepare_data(path, None, 256, 0.1, 8)`` runs as it does there; the toolkit's own options
    follow, keyword-only. An unpaired (CycleGAN) folder gives
    :class:`~toolkit.data.unpaired.UnpairedDataLoaders` of ``(a, b)`` batches instead, one chip
    of each domain (see :mod:`toolkit.data.unpaired`).

    Args:
        path: a chip folder in any layout of :mod:`toolkit.data.layouts` (ArcGIS Export_Tiles or
            Classified_Tiles, ``Images/train_a`` + ``train_b``, or side-by-side A|B images), or
            an unpaired one: ``A/`` + ``B/`` (CycleGAN export), ``trainA/`` + ``trainB/``. A list
            of paired folders (several exports, as arcgis.learn takes them) is read as one: their
            chips are concatenated; they must share dataset type, band counts and classes.
        class_mapping: ``{value: name}``: new names for classes of a Classified_Tiles target
            (``data.classes``, the saved model's ``Classes``); values must be classes of the data.
        chip_size: crop chips to this size (random crops when training, centred for
            validation); default the chips' own size (arcgis.learn's default, 224, would crop).
        val_split_pct: share of the chips held out for validation, drawn at random (side-by-side
            folders with a ``val/`` folder use it instead; ignored with ``validation_area``).
        batch_size: chips per batch (arcgis.learn's default is 64; 8 suits CPUs and small GPUs);
            ``None`` picks one for the device (:func:`default_batch_size`), as arcgis.learn
            estimates one.
        transforms: ``None``: random flips and 90-degree rotations, the same for input and target,
            on the training set only (and, for masks, the ``max_*`` augmentation below). ``False``: none. A list of fastai batch transforms (e.g.
            ``[Flip(), Rotate()]``): applied instead, to input and target together, training only.
        collate_fn: makes a batch from a list of samples (``(input, target)`` tensors), for
            both loaders; default fastai's ``fa_collate``.
        seed: seed of the train/validation split and of the statistics sample; the same seed
            gives the same split.
        dataset_type: ``"Pix2Pix"`` (or ``"Export_Tiles"``), ``"Classified_Tiles"`` or
            ``"CycleGAN"``; detected from the folder by default (``images/`` + ``images2/`` is
            Pix2Pix unless its metadata says CycleGAN).
        resize_to: resize chips to this size first (bilinear; nearest for labels).
        working_dir: default working folder of models trained on this data: they save and
            checkpoint under ``<working_dir>/models/`` (else ``<path>/models/``).
        norm_pct: share of the training chips (a seeded sample) that the per-band statistics are
            computed from, when the folder's .emd does not hold them (``AllTilesStats``).
        num_workers: loader processes; default :func:`default_num_workers`.
        direction: ``"AtoB"`` or ``"BtoA"``: which half of side-by-side images is the input.
        rgb_bands: default 0-based bands of the input shown by figures.
        extract_bands: 0-based input bands to keep (paired folders).
        validation_area: validate on ground of its own instead of a random share of the chips:
            a shapely geometry in the chips' CRS, a GeoDataFrame / GeoSeries, or a vector file.
            Chips wholly inside it validate, chips wholly outside it train, chips across its edge
            are left out (``data.left_out``), so no validation chip shares a pixel with a
            training chip (:mod:`toolkit.data.split`). With overlapping chips (``stride`` below
            ``tile_size``) a random split validates on pixels the model trained on: early
            stopping, the best checkpoint and ``tune_footprints`` would then choose on seen
            ground. Needs georeferenced chips (paired folders).
        max_lighting, max_rotate, max_zoom: more augmentation of the training chips, as fastai's
            ``aug_transforms`` (arcgis.learn's ``get_transforms``) names it:
            ``max_lighting``, the strength of random brightness, contrast and colour changes of
            the input, from 0 (none) to below 1 (:func:`toolkit.data.dataset.lighting`);
            ``max_rotate``, turns by up to this many degrees either way and ``max_zoom``,
            enlargements by up to this factor (>= 1), the same for input and target
            (:func:`toolkit.data.dataset.turn_and_zoom`). Defaults, with the default
            ``transforms``: for mask targets (Classified_Tiles) :data:`MASK_AUGMENTATION`
            (measured on held-out ground, benchmarks/README.md); for image targets none, since
            their brightness follows the input's.
        **kwargs: arcgis.learn's ``bands`` (0-based band indices: ``extract_bands``); its
            options that mean nothing here (:data:`IGNORED_ARCGIS_KWARGS`: ``imagery_type``,
            ``stratify``, ``n_masks``...) are accepted with a warning saying what they do in
            arcgis.learn and why they are ignored; any other keyword raises a ``TypeError``.

    Returns:
        :class:`ChipDataLoaders`, a fastai ``DataLoaders``. Nothing is written into ``path``.
    """
    if "bands" in kwargs:  # arcgis.learn's name for the input bands to use
        extract_bands = _arcgis_bands(kwargs.pop("bands"), extract_bands)
    check_arguments(val_split_pct=val_split_pct, norm_pct=norm_pct, num_workers=num_workers, kwargs=kwargs)
    if batch_size is None:
        batch_size = default_batch_size(local_device())
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1 (or None: chosen for the device), got {batch_size!r}.")
    paths = _paths(path)
    if any(unpaired_layout(p, dataset_type) is not None for p in paths):
        if len(paths) > 1:
            raise ValueError(f"a list of folders is read for paired data only; {paths} include an "
                             "unpaired (CycleGAN) folder: pass one unpaired folder.")
        for key, value in (("extract_bands", extract_bands), ("direction", None if direction == "AtoB" else direction),
                           ("class_mapping", class_mapping), ("validation_area", validation_area)):
            if value is not None:
                raise ValueError(f"{key} applies to paired folders; {paths[0]} holds unpaired (CycleGAN) "
                                 "domains, each read with all of its bands.")
        data = unpaired_loaders(index_unpaired(paths[0], dataset_type=dataset_type), batch_size=batch_size,
                                val_split_pct=val_split_pct, seed=seed, chip_size=chip_size,
                                resize_to=resize_to, transforms=transforms, norm_pct=norm_pct,
                                num_workers=num_workers, rgb_bands=rgb_bands, collate_fn=collate_fn)
        data.working_dir = Path(working_dir) if working_dir is not None else None
        data.settings = _settings(batch_size, val_split_pct, seed, chip_size)
        return data
    folder = merge_folders([index_folder(p, dataset_type=dataset_type, direction=direction) for p in paths])
    if class_mapping is not None:
        folder = dataclasses.replace(folder, classes=rename_classes(folder, class_mapping))
    extract = _extract_bands(extract_bands, folder.input_header.bands)
    left_out = []
    if validation_area is None:
        train_pairs, valid_pairs = split_pairs(folder, val_split_pct, seed)
    elif folder.valid_pairs:
        raise ValueError(f"{folder.path} has its own validation set (val/); validation_area splits "
                         "one set of chips by where they lie: pass one or the other.")
    else:
        split = split_by_area(folder.pairs, validation_area, where=str(folder.path))
        train_pairs, valid_pairs, left_out = split.train, split.valid, split.left_out

    input_norm, target_norm = folder_norms(folder, train_pairs, valid_pairs, norm_pct, seed, extract)
    resize, size, crop = chip_sizes((folder.input_header.width, folder.input_header.height),
                                    resize_to, chip_size, where=f"the chips of {folder.path}")
    augment = transforms is None
    extra = augmentation(max_lighting, max_rotate, max_zoom,
                         defaults=augment and folder.dataset_type == CLASSIFIED_TILES)

    def dataset(pairs: list[ChipPair], train: bool) -> ChipPairDataset:
        return ChipPairDataset(pairs, input_norm=input_norm, target_norm=target_norm, train=train,
                               augment=augment, resize_to=resize, chip_size=crop,
                               extract_bands=extract, **extra)

    train_dl, valid_dl, device = loaders(dataset(train_pairs, True), dataset(valid_pairs, False),
                                         batch_size=batch_size, num_workers=num_workers,
                                         transforms=transforms, collate_fn=collate_fn)
    data = ChipDataLoaders(train_dl, valid_dl, folder=folder, input_norm=input_norm,
                           target_norm=target_norm, chip_size=crop or size, resized=size,
                           rgb_bands=rgb_bands, device=device)
    data.working_dir = Path(working_dir) if working_dir is not None else None
    data.left_out = left_out
    data.settings = _settings(batch_size, val_split_pct, seed, chip_size)
    return data


def _settings(batch_size: int, val_split_pct: float, seed: int, chip_size) -> DataConfig:
    """What a repeat of this run needs (a saved model's ``Toolkit.run.data``, ``toolkit train
    --config``); the arguments were checked by then."""
    return DataConfig(batch_size=batch_size, val_split_pct=float(val_split_pct), seed=int(seed),
                      chip_size=tuple(chip_size) if isinstance(chip_size, list) else chip_size)


def augmentation(max_lighting, max_rotate, max_zoom, *, defaults: bool) -> dict[str, float]:
    """The dataset's ``lighting``, ``rotate`` and ``zoom`` from prepare_data's arguments: given
    values are checked; ``None`` takes :data:`MASK_AUGMENTATION` when ``defaults``, else none."""
    base = MASK_AUGMENTATION if defaults else {"max_lighting": 0.0, "max_rotate": 0.0, "max_zoom": 1.0}
    given = {"max_lighting": max_lighting, "max_rotate": max_rotate, "max_zoom": max_zoom}
    values = {k: float(base[k] if v is None else v) for k, v in given.items()}
    if not 0 <= values["max_lighting"] < 1:
        raise ValueError(f"max_lighting must lie in [0, 1), got {values['max_lighting']}.")
    if not 0 <= values["max_rotate"] <= 180:
        raise ValueError(f"max_rotate must lie in [0, 180] degrees, got {values['max_rotate']}.")
    if not values["max_zoom"] >= 1:
        raise ValueError(f"max_zoom must be 1 (none) or more, got {values['max_zoom']}.")
    return {"lighting": values["max_lighting"], "rotate": values["max_rotate"], "zoom": values["max_zoom"]}


def _paths(path) -> list[Path]:
    """``path`` as a list of folders: one, or the several of a list (arcgis.learn's multi-folder)."""
    if isinstance(path, (str, os.PathLike)):
        return [Path(path)]
    paths = [Path(p) for p in path]
    if not paths:
        raise ValueError("prepare_data() got an empty list of folders.")
    if len(set(paths)) != len(paths):
        raise ValueError(f"prepare_data() got the same folder twice: {[str(p) for p in paths]}.")
    return paths


def merge_folders(folders: list[ChipFolder]) -> ChipFolder:
    """One :class:`ChipFolder` of the chips of several exports (the first's path, layout, headers,
    band names and cell size). They must agree in dataset type, input and target band counts,
    chip size and class values; ``ValueError`` naming the first folder that does not. The .emd
    statistics are kept only when every folder has the same ones; else they are computed from
    the chips. A fixed validation set (side by side ``val/``) is kept only from one folder."""
    first = folders[0]
    if len(folders) == 1:
        return first
    values = lambda f: [int(c["Value"]) for c in f.classes]  # noqa: E731
    for other in folders[1:]:
        checks = [("dataset type", first.dataset_type, other.dataset_type),
                  ("input bands", first.input_header.bands, other.input_header.bands),
                  ("target bands", first.target_header.bands, other.target_header.bands),
                  ("chip size (width, height)", (first.input_header.width, first.input_header.height),
                   (other.input_header.width, other.input_header.height)),
                  ("class values", values(first), values(other))]
        for what, mine, theirs in checks:
            if mine != theirs:
                raise ValueError(f"prepare_data() reads a list of folders as one, so they must agree; "
                                 f"{other.path} has {what} {theirs}, {first.path} {mine}.")
    if any(f.valid_pairs for f in folders):
        raise ValueError("a list of folders cannot hold side-by-side folders with their own val/ "
                         f"set ({[str(f.path) for f in folders if f.valid_pairs]}); pass one such folder.")
    same = lambda key: all(getattr(f, key) == getattr(first, key) for f in folders)  # noqa: E731
    return dataclasses.replace(
        first, pairs=[p for f in folders for p in f.pairs],
        input_stats=first.input_stats if same("input_stats") else None,
        target_stats=first.target_stats if same("target_stats") else None,
        cell_size=first.cell_size if same("cell_size") else None)


def rename_classes(folder: ChipFolder, class_mapping: Mapping[int, str]) -> list[dict]:
    """The folder's class records with the names of ``class_mapping`` (``{value: name}``, values
    as ints or strings of ints). ``ValueError`` when the data has no classes or a value is not one
    of them."""
    if folder.dataset_type != CLASSIFIED_TILES:
        raise ValueError(f"class_mapping names the classes of a Classified_Tiles target; the target "
                         f"of {folder.path} is an image ({folder.dataset_type}).")
    try:
        mapping = {int(k): str(v) for k, v in dict(class_mapping).items()}
    except (TypeError, ValueError) as err:
        raise ValueError(f"class_mapping must map class values (integers) to names, got {class_mapping!r}.") from err
    classes = folder.classes or classes_from_labels(folder.pairs)
    known = {int(c["Value"]) for c in classes}
    unknown = sorted(set(mapping) - known)
    if unknown:
        raise ValueError(f"class_mapping names values {unknown} that are not classes of {folder.path} "
                         f"(its classes: {sorted(known)}).")
    return [c | {"Name": mapping.get(int(c["Value"]), c.get("Name", str(c["Value"])))} for c in classes]


def _arcgis_bands(bands, extract_bands):
    """arcgis.learn's ``bands=`` as ``extract_bands``: 0-based band indices (band names, which
    arcgis.learn matches against its imagery type's, are not known here)."""
    if extract_bands is not None:
        raise ValueError("pass either bands= (arcgis.learn's name) or extract_bands=, not both.")
    if bands is None:
        return None
    if not isinstance(bands, (list, tuple)) or not all(isinstance(b, int) and not isinstance(b, bool) for b in bands):
        raise ValueError(f"bands must be a list of 0-based band indices here (arcgis.learn also takes band "
                         f"names of its imagery types), got {bands!r}.")
    return list(bands)


def check_arguments(*, val_split_pct: float, norm_pct: float, num_workers: int | None, kwargs: dict) -> None:
    """Refuse what :func:`prepare_data` cannot take: any keyword it does not name (arcgis.learn
    options the toolkit does not take, with the reason), out-of-range shares."""
    unknown = sorted(k for k in kwargs if k not in IGNORED_ARCGIS_KWARGS)
    if unknown:
        raise TypeError(f"prepare_data() does not take the keyword argument(s) {', '.join(unknown)}. "
                        f"Its arguments: {', '.join(p for p in inspect.signature(prepare_data).parameters if p != 'kwargs')}.")
    for key in sorted(kwargs):
        warnings.warn(f"prepare_data({key}=...) is ignored: in arcgis.learn it {IGNORED_ARCGIS_KWARGS[key]}.",
                      stacklevel=3)
    if not 0.0 <= val_split_pct < 1.0:
        raise ValueError(f"val_split_pct must lie in [0, 1), got {val_split_pct}.")
    if not 0.0 < norm_pct <= 1.0:
        raise ValueError(f"norm_pct must lie in (0, 1], got {norm_pct}.")
    if num_workers is not None and num_workers < 0:
        raise ValueError(f"num_workers must be 0 or more, got {num_workers}.")


def _extract_bands(bands, n_bands: int) -> list[int] | None:
    if bands is None:
        return None
    bands = [int(b) for b in bands]
    if not bands or not all(0 <= b < n_bands for b in bands):
        raise ValueError(f"extract_bands must list 0-based bands of the {n_bands} input bands, got {bands}.")
    return bands

