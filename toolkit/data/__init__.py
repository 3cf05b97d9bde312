"""Chip folders -> fastai DataLoaders.

    from toolkit import prepare_data
    data = prepare_data("chips", batch_size=8)   # any Esri export, or a pix2pix layout
    data.show_batch(rows=4)

Parts a user can also use alone: :func:`index_folder` (layout detection and pairing),
:class:`ChipPairDataset` (chips -> tensors), :class:`BandNorm` / :class:`MaskEncoding`
(band values <-> [-1, 1]).
"""

from toolkit.data.dataset import ChipPairDataset, read_pair
from toolkit.data.layouts import (CLASSIFIED_TILES, DATASET_TYPES, PIX2PIX, ChipFolder, ChipPair,
                                  index_folder)
from toolkit.data.loaders import ChipDataLoaders, default_num_workers, prepare_data, split_pairs
from toolkit.data.normalization import BandNorm, MaskEncoding, target_from_dict

__all__ = [
    "CLASSIFIED_TILES", "DATASET_TYPES", "PIX2PIX", "BandNorm", "ChipDataLoaders", "ChipFolder",
    "ChipPair", "ChipPairDataset", "MaskEncoding", "default_num_workers", "index_folder",
    "prepare_data", "read_pair", "split_pairs", "target_from_dict",
]
