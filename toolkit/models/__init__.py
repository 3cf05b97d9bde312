"""Networks, the fastai GAN training and the Pix2Pix wrapper.

    from toolkit import Pix2Pix
    model = Pix2Pix(data)     # data from prepare_data
    model.fit(20)

Parts a user can also use alone: :class:`UNetGenerator`, :class:`PatchDiscriminator`,
:class:`GANTrainer` (the fastai callback that owns D), :class:`Pix2PixLoss`.
"""

from toolkit.models.gan import GANTrainer, History, Pix2PixLoss
from toolkit.models.networks import (SUPPORTED_BACKBONES, PatchDiscriminator, UNetGenerator,
                                     backbone_generator, init_weights, unet_depth)
from toolkit.models.pix2pix import Pix2Pix

__all__ = ["GANTrainer", "History", "PatchDiscriminator", "Pix2Pix", "Pix2PixLoss",
           "SUPPORTED_BACKBONES", "UNetGenerator", "backbone_generator", "init_weights", "unet_depth"]
