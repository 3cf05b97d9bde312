"""`make demo`: the building-footprint workflow, end to end, on real data, scored where the model
has not been.

    .venv/bin/python scripts/demo.py [out_folder]      # default demo_output/

The sample is Banepa, Nepal (``datasets.fetch("banepa_buildings", resolution=0.3)``): drone imagery
mosaicked to 0.3 m with 1,466 OpenStreetMap footprints, a dense town centre where most buildings
touch. The west two thirds train the model, with a validation strip inside them (the northern 96 m,
on ground of its own: no validation chip shares a pixel with a training chip); the east third is
held out, and the scores that matter are measured there. If Banepa cannot be fetched (offline and
no ``TOOLKIT_DATA_MIRROR``), the demo says so and runs on the SpaceNet Atlanta tile instead; its
output and metrics.json name the sample used.

Steps: export chips with contour-reinforced footprint labels, prepare_data with the validation
strip, Pix2Pix fit, tune the footprint settings on the strip, save and reload, predict the whole
scene with predict_raster (test-time augmentation), vectorize the footprints (touching ones
separated along the outline class), score them against the truth, and compare the ways of making
footprints in both areas (metrics.json "held_out_by_method", "training_area_by_method").

CPU-sized settings by default (about 11 minutes on 2 cores); the paper's sizes on a GPU.
Writes: show_batch.png, show_results.png, loss_graph.png, footprints.png, prediction.tif,
footprints.gpkg, metrics.json and the saved model folder model/.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # the demo writes figures to files

import geopandas as gpd  # noqa: E402
import rasterio  # noqa: E402
import torch  # noqa: E402

from toolkit import Pix2Pix, datasets, export_training_data, prepare_data, vectorize, write_vector  # noqa: E402
from toolkit._fs import atomic_file  # noqa: E402
from toolkit.config import DataConfig, ExportConfig, FitConfig, Pix2PixConfig  # noqa: E402
from toolkit.data.split import split_scene  # noqa: E402
from toolkit.metrics import footprint_scores  # noqa: E402
from toolkit.raster import clip_raster  # noqa: E402
from toolkit.viz import plot_footprints  # noqa: E402

# Settings per sample and device, as the toolkit's stage configs (toolkit.config). Banepa's CPU
# recipe was measured on the held-out east third (benchmarks/README.md, "Footprints on ground
# the model has not seen"): within the demo's 15 minutes on 2 cores, the mosaic at 0.3 m (finer
# pixels scored better at the same number of training steps: 0.5, 0.4 and 0.3 m in turn), 3 px
# outlines, 256 px chips every 128 px (77 m of context: more than 128 px chips, at half their
# time per epoch), the U-Net without the adversarial term (gan_weight 0: the discriminator costs
# a third of every step and did not raise the held-out scores) trained with cross-entropy plus Dice (the
# class-balanced L1 drew outlines too wide) at lr 2e-3, with the default augmentation for masks,
# kept as trained to the end of its one-cycle schedule (no checkpoints). On a GPU, the paper's
# sizes and loss.


@dataclass(frozen=True)
class Recipe:
    """The demo's settings of each stage, and the ground pixel size of the Banepa mosaic."""

    export: ExportConfig
    data: DataConfig
    model: Pix2PixConfig
    fit: FitConfig
    resolution: float | None = None  # metres; None: the sample's own (Banepa: 0.5 m)

    def to_dict(self) -> dict:
        stages = {stage: getattr(self, stage).to_dict() for stage in ("export", "data", "model", "fit")}
        return stages | {"resolution": self.resolution}


def recipe(tile_size: int, ngf: int, batch_size: int, epochs: int, lr: float, gan_weight: float, *,
           stride: int = 64, contour_width: int = 2, mask_loss: str = "l1",
           resolution: float | None = None) -> Recipe:
    """Footprints with an outline class, ``ngf`` filters in both networks; the L1 term
    class-balanced, or cross-entropy plus Dice."""
    return Recipe(ExportConfig(tile_size=tile_size, stride=stride, contour_width=contour_width),
                  DataConfig(batch_size=batch_size, seed=0),
                  Pix2PixConfig(ngf=ngf, ndf=ngf, gan_weight=gan_weight, class_balance=mask_loss == "l1",
                                mask_loss=mask_loss),
                  FitConfig(epochs=epochs, lr=lr, checkpoint="none"), resolution)


RECIPES = {
    ("banepa_buildings", "cpu"): recipe(256, 32, 4, 120, 2e-3, 0.0, stride=128, contour_width=3,
                                        mask_loss="bce_dice", resolution=0.3),
    ("banepa_buildings", "gpu"): recipe(256, 64, 4, 200, 2e-4, 1.0),
    ("atlanta_buildings", "cpu"): recipe(128, 32, 4, 80, 2e-4, 1.0),
    ("atlanta_buildings", "gpu"): recipe(256, 64, 4, 100, 2e-4, 1.0),
}
# TOOLKIT_QUICK=1, as for the notebooks: a tiny network and two epochs, to check every step (the
# test suite runs the demo so); the scores are then meaningless.
QUICK = Recipe(ExportConfig(tile_size=64, stride=64, contour_width=2), DataConfig(batch_size=8, seed=0),
               Pix2PixConfig(ngf=8, ndf=8, gan_weight=1.0, class_balance=True),
               FitConfig(epochs=2, lr=1e-3, checkpoint="none"))
TRAIN_SHARE = 2 / 3  # the west two thirds train, the east third is held out
VALIDATION_METRES = 96  # the validation strip: the northern 96 m of the training area


def fetch_sample(resolution: float | None) -> tuple[datasets.Sample, str | None]:
    """Banepa (its mosaic at ``resolution`` metres), else (offline, no mirror) Atlanta, with the
    reason Banepa was not used."""
    try:
        return datasets.fetch("banepa_buildings", resolution=resolution), None
    except datasets.SampleDataError as err:
        return datasets.fetch("atlanta_buildings"), str(err)


def main(out: Path) -> dict:
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    work.mkdir(exist_ok=True)
    device = "gpu" if torch.cuda.is_available() else "cpu"
    quick = os.environ.get("TOOLKIT_QUICK") == "1"
    sample, fallback = fetch_sample(None if quick else RECIPES["banepa_buildings", device].resolution)
    if fallback:
        print(f"The Banepa sample could not be fetched, so this demo runs on the SpaceNet Atlanta tile "
              f"(43 buildings) instead:\n  {fallback}\n")
    settings = QUICK if quick else RECIPES[sample.name, device]
    truth = gpd.read_file(sample["footprints"])
    with rasterio.open(sample["image"]) as src:
        width, height, pixel = src.width, src.height, src.res[0]
    validation_rows = round(VALIDATION_METRES / pixel)
    split = split_scene(sample["image"], TRAIN_SHARE, validation_rows)
    east, west, strip = split.held_out, split.train, split.validation
    train_columns = split.train_window.width
    print(f"Sample: {sample.name} ({sample.credit})")
    print(f"  {sample['image'].name}: {width} x {height} px of {pixel:g} m; {len(truth)} footprints")
    print(f"  training area: the west {train_columns} columns (validation strip: their northern "
          f"{validation_rows} rows); held out: the east {width - train_columns} columns")
    print(f"Settings ({device.upper()}{', quick' if settings is QUICK else ''}): {settings.to_dict()}")

    # 1. Training chips from the west part, footprint outlines as their own class.
    train_area = clip_raster(sample["image"], work / "train_area.tif", overwrite=True, window=split.train_window)
    export = replace(settings.export, in_class_data=str(sample["footprints"]))
    summary = export_training_data(train_area, out / "chips", output_nofeature_tiles=False, overwrite=True,
                                   **export.kwargs())
    print(f"\n1. {summary}")

    # 2. DataLoaders: the validation chips lie in the strip, on ground no training chip covers
    #    (chips across its edge are left out), so checkpoint choice and tuning are honest.
    data = prepare_data(summary.out_folder, validation_area=strip, **settings.data.kwargs())
    print(f"2. {data}")
    _save(data.show_batch(rows=4), out / "show_batch.png", sample.credit)

    # 3. Train. The weights are kept as the one-cycle schedule leaves them: on Banepa the epoch
    #    whose footprints scored best on the strip (14 chips; fit(monitor="footprint_f1")) scored
    #    worse on held-out ground than the last one (benchmarks/README.md): too few buildings to
    #    choose an epoch by.
    torch.manual_seed(0)
    model = Pix2Pix(data, working_dir=work / "models", **settings.model.kwargs())
    print(f"3. {model}: fit({settings.fit.epochs}, lr={settings.fit.lr})")
    model.fit(**settings.fit.kwargs())
    _save(model.plot_losses(), out / "loss_graph.png")
    _save(model.show_results(rows=4), out / "show_results.png", sample.credit)
    validation = model.compute_metrics()

    # 4. Footprint settings from the validation strip (object F1), saved with the model; then
    #    save, and reload as a user would later, without the data.
    tuned = model.tune_footprints()
    print(f"4. tuned footprint settings: threshold {tuned['threshold']}, boundary_threshold "
          f"{tuned['boundary_threshold']}, min_area {tuned['min_area']} m², marker_erosion "
          f"{tuned['marker_erosion']} px (validation object F1 {tuned['f1']:.3f}; "
          f"{tuned['default_f1']:.3f} with the defaults)")
    emd = model.save(out / "model", overwrite=True)  # a rerun replaces the last run's model
    model = Pix2Pix.from_model(emd)
    print(f"   saved {emd.parent} and reloaded it")

    # 5. The whole scene, each window averaged over its flips and quarter turns (test-time
    #    augmentation), then one polygon per building: the prediction's tags name the outline band
    #    and the tuned settings, so vectorize needs no arguments.
    prediction = model.predict_raster(sample["image"], out / "prediction.tif", tta=True, overwrite=True)
    footprints = vectorize(prediction, simplify_tolerance=0.25)
    write_vector(footprints, out / "footprints.gpkg", overwrite=True)
    print(f"5. {prediction.name}: scores for the whole scene; {len(footprints)} footprints -> footprints.gpkg")

    # 6. Scores on the held-out east third, for the footprints and for the ways of making them.
    held_out = footprint_scores(prediction, footprints, truth, area=east)
    trained_on = footprint_scores(prediction, footprints, truth, area=west)
    single = model.predict_raster(sample["image"], work / "prediction_single_pass.tif", overwrite=True)
    variants = {  # name -> (score raster, footprints)
        "single pass, connected areas at 0.5 (before outlines were used)":
            (single, vectorize(single, boundary_band=False, threshold=0.5, min_area=10.0,
                               simplify_tolerance=0.25)),
        "single pass, outline watershed, defaults": (single, vectorize(single, threshold=0.5, boundary_threshold=0.5,
                                                                       min_area=0.0, marker_erosion=0,
                                                                       simplify_tolerance=0.25)),
        "single pass, outline watershed, tuned": (single, vectorize(single, simplify_tolerance=0.25)),
        "test-time augmentation, tuned (footprints.gpkg)": (prediction, footprints),
        "+ regularized outlines": (prediction, vectorize(prediction, regularize=True)),
    }
    comparison = {name: footprint_scores(raster, polygons, truth, area=east)
                  for name, (raster, polygons) in variants.items()}
    comparison_west = {name: footprint_scores(raster, polygons, truth, area=west)
                       for name, (raster, polygons) in variants.items()}
    _save(plot_footprints(sample["image"], {"Predicted": footprints, "Ground truth": truth}, area=east,
                          credit=sample.credit), out / "footprints.png")
    metrics = {"sample": sample.name, "credit": sample.credit, "fallback_reason": fallback,
               "held_out_east_third": held_out, "training_area_west": trained_on,
               "validation_chips": validation, "footprint_settings": tuned,
               "held_out_by_method": comparison, "training_area_by_method": comparison_west,
               "split": {"pixel_size": pixel, "train_columns": train_columns, "validation_rows": validation_rows,
                         "train_chips": len(data.train_ds), "validation_chips": len(data.valid_ds),
                         "left_out_chips": len(data.left_out)},
               "settings": settings.to_dict(), "device": "cuda" if torch.cuda.is_available() else "cpu",
               "seconds": round(time.perf_counter() - start, 1)}
    with atomic_file(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=2) + "\n")

    for title, scores in ((f"held-out east third ({width - train_columns} x {height} px, not seen in training)",
                           held_out),
                          (f"training area, west ({train_columns} x {height} px)", trained_on)):
        p, o = scores["pixel"], scores["object"]
        print(f"\nScores in the {title}:")
        print(f"  pixels:  IoU {p['iou']:.3f}, F1 {p['f1']:.3f}, precision {p['precision']:.3f}, "
              f"recall {p['recall']:.3f}")
        print(f"  objects: F1 {o['f1']:.3f} ({o['tp']} matched, {o['fp']} false, {o['fn']} missed; "
              "IoU >= 0.5)")
    print("\nObject F1 (IoU >= 0.5) by way of making footprints, held-out east third | training area:")
    for name in comparison:
        o, w = comparison[name]["object"], comparison_west[name]["object"]
        print(f"  {name:<58} {o['f1']:.3f} ({o['tp']:>3} of {o['tp'] + o['fn']:>3}, {o['fp']:>3} false) | "
              f"{w['f1']:.3f} ({w['tp']:>3} of {w['tp'] + w['fn']:>3}, {w['fp']:>3} false)")
    print(f"Validation strip: PSNR {validation['psnr']:.2f} dB, SSIM {validation['ssim']:.3f}, "
          f"IoU {validation['iou']:.3f}, footprint F1 {validation['footprint_f1']:.3f}")
    print(f"\nSample: {sample.name}. {sample.credit}.")
    print("\nWrote:")
    for path in sorted(out.iterdir()):
        if path.name != "work":
            kind = "folder" if path.is_dir() else f"{path.stat().st_size / 1024:.0f} KB"
            print(f"  {path}  ({kind})")
    print(f"\nDone in {metrics['seconds'] / 60:.1f} min.")
    return metrics


def _save(fig, path: Path, credit: str | None = None) -> None:
    import matplotlib.pyplot as plt

    if credit:
        fig.text(0.01, 0.002, credit, fontsize=7, color="0.35", va="bottom")
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("demo_output")
    try:
        main(folder)
    except FileExistsError as err:
        # The toolkit replaces only what it recognises as its own output; folders written by
        # versions before the output manifests (or holding other files) are left alone.
        sys.exit(f"{err}\nThe demo does not remove files it cannot tell are its own: remove "
                 f"{folder} (e.g. written by an older version of the toolkit) and run it again.")
