"""Networks, the fastai GAN training and the translation models.

    from toolkit import Pix2Pix, CycleGAN
    model = Pix2Pix(data)     # data from prepare_data
    model.fit(20)
    model = toolkit.load_model("m.dlpk")   # the class its .emd's ModelType names

Every model is a :class:`TranslationModel` (training, saving, inference); a model file adds its
networks and losses and registers itself (:func:`register`). Parts a user can also use alone:
:class:`UNetGenerator`, :class:`ResnetGenerator`, :class:`PatchDiscriminator`,
:class:`GANTrainer` and :class:`CycleGANTrainer` (the fastai callbacks that own the
discriminators), :class:`ImagePool`. Inference alone, without fastai:
:func:`load_translation` (a saved model's direction for ``predict_raster``).

Names are imported from their modules when first used, so the fastai-free modules (``specs``,
``translation``, ``networks``, ``model_folder``, ``arcgis_learn``) can be imported without fastai.

Layer: front doors.
"""

from toolkit._lazy import lazy_exports

_EXPORTS = {
    "toolkit.models.base": ("MODEL_TYPES", "TranslationModel", "register"),
    "toolkit.models.zoo": ("MODELS", "load_model"),
    "toolkit.models.translation": ("Translation", "load_translation"),
    "toolkit.models.gan": ("DiscriminatorStep", "GANTrainer", "History", "Pix2PixLoss"),
    "toolkit.models.networks": ("SUPPORTED_BACKBONES", "PatchDiscriminator", "ResnetGenerator", "UNetGenerator",
                                "backbone_generator", "init_weights", "unet_depth"),
    "toolkit.models.pix2pix": ("Pix2Pix",),
    "toolkit.models.pix2pixhd": ("Pix2PixHD",),
    "toolkit.models.cyclegan": ("CycleGAN", "CycleGANTrainer", "ImagePool"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__, __getattr__, __dir__ = lazy_exports('toolkit.models', _WHERE, globals())
