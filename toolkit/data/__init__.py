"""Chip folders -> fastai DataLoaders.

    from toolkit import prepare_data
    data = prepare_data("chips", batch_size=8)   # any Esri export, or a pix2pix layout
    data.show_batch(rows=4)

Unpaired (CycleGAN) folders, ``A/`` + ``B/`` or ``trainA/`` + ``trainB/``, give
:class:`UnpairedDataLoaders` of ``(a, b)`` batches (see :mod:`toolkit.data.unpaired`).

Parts a user can also use alone: :func:`index_folder` (layout detection and pairing),
:func:`index_unpaired` (two domains), :class:`ChipPairDataset` / :class:`UnpairedDataset`
(chips -> tensors), :class:`BandNorm` / :class:`MaskEncoding` (band values <-> [-1, 1]).
"""

from toolkit.data.dataset import ChipPairDataset, read_image, read_pair
from toolkit.data.layouts import (CLASSIFIED_TILES, CYCLEGAN, DATASET_TYPES, PIX2PIX,
                                  UNPAIRED_DATASET_TYPES, ChipDomain, ChipFolder, ChipPair,
                                  UnpairedFolder, index_folder, index_unpaired, unpaired_layout)
from toolkit.data.loaders import ChipDataLoaders, default_num_workers, prepare_data
from toolkit.data.normalization import BandNorm, MaskEncoding, target_from_dict
from toolkit.data.split import split_by_area, split_pairs
from toolkit.data.unpaired import UnpairedDataLoaders, UnpairedDataset

__all__ = [
    "CLASSIFIED_TILES", "CYCLEGAN", "DATASET_TYPES", "PIX2PIX", "UNPAIRED_DATASET_TYPES", "BandNorm",
    "ChipDataLoaders", "ChipDomain", "ChipFolder", "ChipPair", "ChipPairDataset", "MaskEncoding",
    "UnpairedDataLoaders", "UnpairedDataset", "UnpairedFolder", "default_num_workers",
    "index_folder", "index_unpaired", "prepare_data", "read_image", "read_pair", "split_by_area", "split_pairs",
    "target_from_dict", "unpaired_layout",
]
