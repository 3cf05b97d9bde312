"""Chip folders -> fastai DataLoaders.

    from toolkit import prepare_data
    data = prepare_data("chips", batch_size=8)   # any Esri export, or a pix2pix layout
    data.show_batch(rows=4)

Unpaired (CycleGAN) folders, ``A/`` + ``B/`` or ``trainA/`` + ``trainB/``, give
:class:`UnpairedDataLoaders` of ``(a, b)`` batches (see :mod:`toolkit.data.unpaired`).

Parts a user can also use alone: :func:`index_folder` (layout detection and pairing),
:func:`index_unpaired` (two domains), :class:`ChipPairDataset` / :class:`UnpairedDataset`
(chips -> tensors), :class:`BandNorm` / :class:`MaskEncoding` (band values <-> [-1, 1]).

Names are imported from their modules when first used, so a fastai-free module of this package
(``layouts``, ``metadata``, ``headers``, ``normalization``, ``chips``, ``split``) can be imported
without fastai.

Layer: data (the package's layers, bottom to top: formats and I/O, data, inference core,
training, front doors). Its modules, bottom up: ``chips`` (chip files), ``metadata`` (an
export's .emd and stats files), ``headers`` (chips of a set alike), ``layouts`` (folder
indexing), ``normalization`` and ``split``; ``dataset`` (chips -> tensors), ``chip_stats``
(band statistics), ``folder_loaders`` (the DataLoaders classes); ``unpaired`` (CycleGAN data);
``loaders`` (``prepare_data``, the front door that picks paired or unpaired).
"""

from toolkit._lazy import lazy_exports

_EXPORTS = {
    "toolkit.data.dataset": ("ChipPairDataset", "read_image", "read_pair"),
    "toolkit.data.layouts": ("CLASSIFIED_TILES", "CYCLEGAN", "DATASET_TYPES", "PIX2PIX", "UNPAIRED_DATASET_TYPES",
                             "ChipDomain", "ChipFolder", "ChipPair", "UnpairedFolder", "index_folder",
                             "index_unpaired", "unpaired_layout"),
    "toolkit.data.folder_loaders": ("ChipDataLoaders", "default_num_workers"),
    "toolkit.data.loaders": ("prepare_data",),
    "toolkit.data.normalization": ("BandNorm", "MaskEncoding", "target_from_dict"),
    "toolkit.data.split": ("split_by_area", "split_pairs"),
    "toolkit.data.unpaired": ("UnpairedDataLoaders", "UnpairedDataset"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__, __getattr__, __dir__ = lazy_exports('toolkit.data', _WHERE, globals())
