"""int8 against float32 inference (``predict_raster(precision="int8")``): the quality change on
held-out real data, and the speed.

- **Banepa, held-out east third** (the demo's split): the demo's saved model
  (``demo_output/model``, from ``make demo``) predicts the whole mosaic with test-time
  augmentation in float32 and in int8; footprints by ``vectorize`` with the model's tuned
  settings; pixel IoU and object F1 on the east third (``footprint_scores``).
- **Rotterdam, multispectral -> panchromatic**: a Pix2Pix (ngf 64, 64 px chips) trained on
  scenes 1 and 2 for ``--epochs``; PSNR and SSIM of its prediction of scene 3 against scene 3's
  panchromatic band resampled to the multispectral grid, float32 and int8.
- **Speed**: the paper-sized model of cpu_inference.py on a ``--size`` px mosaic, OpenVINO in
  float32 and int8 and ONNX Runtime in int8 against eager PyTorch (fresh processes, medians).

    .venv/bin/python benchmarks/int8_quality.py [--demo demo_output/model/model.emd] [--epochs 15] [--size 2048]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
from rasterio.enums import Resampling

sys.path.insert(0, str(Path(__file__).parent))
from cpu_inference import main as speed  # noqa: E402

from toolkit import Pix2Pix, datasets, export_training_data, predict_raster, prepare_data, vectorize  # noqa: E402
from toolkit.data.split import split_scene  # noqa: E402
from toolkit.metrics import footprint_scores, psnr, ssim  # noqa: E402


def banepa(emd: Path, work: Path) -> None:
    sample = datasets.fetch("banepa_buildings")
    east = split_scene(sample["image"], 2 / 3, 192).held_out
    truth = gpd.read_file(sample["footprints"])
    print("Banepa held-out east third (demo model, TTA):")
    for precision in ("fp32", "int8"):
        out = predict_raster(emd, sample["image"], work / f"banepa_{precision}.tif", tta=True, overwrite=True,
                             precision=precision, progress=False)
        scores = footprint_scores(out, vectorize(out, simplify_tolerance=0.25), truth, area=east)
        print(f"  {precision}: pixel IoU {scores['pixel']['iou']:.3f}, object F1 {scores['object']['f1']:.3f}")


def rotterdam(epochs: int, work: Path) -> None:
    sample = datasets.fetch("rotterdam")
    chips = []
    for i in (1, 2):
        folder = work / f"pairs_{i}"
        export_training_data(sample[f"multispectral_{i}"], folder, additional_input_raster=sample[f"panchromatic_{i}"],
                             tile_size=64, stride=32, overwrite=True, progress=False)
        chips.append(folder)
    model = Pix2Pix(prepare_data(chips, batch_size=8, seed=0), ngf=64, ndf=64, working_dir=work / "w")
    model.fit(epochs, checkpoint=False)
    emd = model.save(work / "rotterdam_model", compute_metrics=False, overwrite=True)
    with rasterio.open(sample["multispectral_3"]) as ms, rasterio.open(sample["panchromatic_3"]) as pan:
        target = pan.read(out_shape=(1, ms.height, ms.width), resampling=Resampling.average).astype(np.float64)
    data_range = float(target.max() - target.min())
    print(f"Rotterdam scene 3 (held out), ngf 64 trained {epochs} epochs on scenes 1-2:")
    for precision in ("fp32", "int8"):
        out = predict_raster(emd, sample["multispectral_3"], work / f"rotterdam_{precision}.tif", overwrite=True,
                             precision=precision, progress=False)
        with rasterio.open(out) as src:
            pred = src.read().astype(np.float64)
        print(f"  {precision}: PSNR {psnr(pred, target, data_range):.2f} dB, SSIM {ssim(pred, target, data_range):.3f}")


if __name__ == "__main__":
    args = sys.argv[1:]
    get = lambda name, default: type(default)(args[args.index(name) + 1]) if name in args else default  # noqa: E731
    work = Path(tempfile.mkdtemp(prefix="toolkit_int8_"))
    demo = Path(get("--demo", "demo_output/model/model.emd"))
    if demo.is_file():
        banepa(demo, work)
    else:
        print(f"{demo}: no demo model (run make demo first); Banepa skipped")
    rotterdam(get("--epochs", 15), work)
    speed(get("--size", 2048), 64, get("--repeat", 2), 360.0, ("eager", "openvino", "openvino-int8", "onnxruntime-int8"))
