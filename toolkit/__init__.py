"""An open geospatial toolkit for image-to-image translation on real rasters, in the arcgis.learn style.

    from toolkit import export_training_data, prepare_data
    export_training_data("scene.tif", "chips", in_class_data="footprints.geojson", tile_size=256)
    data = prepare_data("chips", batch_size=8)

Heavy parts (torch, fastai) are imported only when first used, so ``import toolkit`` is quick.

Layer: the package's names; each is imported from its module (any layer) when first used.
"""

from __future__ import annotations

from toolkit._lazy import lazy_exports

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "export_training_data": "toolkit.export",
    "ExportSummary": "toolkit.export",
    "prepare_data": "toolkit.data",
    "Pix2Pix": "toolkit.models",
    "CycleGAN": "toolkit.models",
    "Pix2PixHD": "toolkit.models",
    "load_model": "toolkit.models",
    "load_translation": "toolkit.models",
    "predict_raster": "toolkit.inference",
    "predict_rasters": "toolkit.scenes",
    "vectorize": "toolkit.vector",
    "write_vector": "toolkit.vector",
    "metrics": "toolkit.metrics",
    "datasets": "toolkit.datasets",
    "ddp": "toolkit.ddp",
}

__all__, __getattr__, __dir__ = lazy_exports("toolkit", _EXPORTS, globals())
