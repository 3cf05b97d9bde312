"""Networks, the fastai GAN training and the translation models.

    from toolkit import Pix2Pix, CycleGAN
    model = Pix2Pix(data)     # data from prepare_data
    model.fit(20)
    model = toolkit.load_model("m.dlpk")   # the class its .emd's ModelType names

Every model is a :class:`TranslationModel` (training, saving, inference); a model file adds its
networks and losses and registers itself (:func:`register`). Parts a user can also use alone:
:class:`UNetGenerator`, :class:`ResnetGenerator`, :class:`PatchDiscriminator`,
:class:`GANTrainer` and :class:`CycleGANTrainer` (the fastai callbacks that own the
discriminators), :class:`ImagePool`.
"""

from toolkit.models.base import MODEL_TYPES, Translation, TranslationModel, load_model, register
from toolkit.models.gan import DiscriminatorStep, GANTrainer, History, Pix2PixLoss
from toolkit.models.networks import (SUPPORTED_BACKBONES, PatchDiscriminator, ResnetGenerator,
                                     UNetGenerator, backbone_generator, init_weights, unet_depth)
from toolkit.models.pix2pix import Pix2Pix
from toolkit.models.cyclegan import CycleGAN, CycleGANTrainer, ImagePool  # noqa: E402  (after Pix2Pix: registry order)

__all__ = ["CycleGAN", "CycleGANTrainer", "DiscriminatorStep", "GANTrainer", "History", "ImagePool",
           "MODEL_TYPES", "PatchDiscriminator", "Pix2Pix", "Pix2PixLoss", "ResnetGenerator",
           "SUPPORTED_BACKBONES", "Translation", "TranslationModel", "UNetGenerator",
           "backbone_generator", "init_weights", "load_model", "register", "unet_depth"]
