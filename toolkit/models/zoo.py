"""The toolkit's models by ``.emd`` ModelType, and :func:`load_model`, which loads any of them.

Importing this module imports every model class (:class:`toolkit.Pix2Pix`,
:class:`toolkit.CycleGAN`, :class:`toolkit.Pix2PixHD`), whose ``@register`` makes it loadable by ModelType; a new model
is one module plus a line here.

Layer: front doors (above the model classes it gathers).
"""

from __future__ import annotations

import os

from toolkit.models.base import MODEL_TYPES, TranslationModel
from toolkit.models.cyclegan import CycleGAN
from toolkit.models.pix2pix import Pix2Pix
from toolkit.models.pix2pixhd import Pix2PixHD

__all__ = ["MODELS", "load_model"]

MODELS: dict[str, type[TranslationModel]] = {"pix2pix": Pix2Pix, "cyclegan": CycleGAN, "pix2pixhd": Pix2PixHD}
"""The toolkit's model classes by the name ``toolkit train --model`` takes."""
assert all(cls.model_type in MODEL_TYPES for cls in MODELS.values())  # registered by importing them


def load_model(path: str | os.PathLike, data=None, **kwargs) -> TranslationModel:
    """Load any saved model (``.emd``, folder or ``.dlpk``) as the class its ``ModelType`` names:
    ``load_model("m.dlpk")`` gives a :class:`toolkit.Pix2Pix`, :class:`toolkit.CycleGAN` or
    :class:`toolkit.Pix2PixHD`.
    ``data`` and ``kwargs`` as for that class's ``from_model``."""
    return TranslationModel.from_model(path, data, **kwargs)  # the base picks the class
