"""`make demo`: the building-footprint workflow, end to end, on the real SpaceNet Atlanta sample.

    .venv/bin/python scripts/demo.py [out_folder]      # default demo_output/

The sample is one 900 x 900 px tile (0.5 m) with 43 footprints. The west two thirds train the
model; the east third is held out, and the scores that matter are measured there. Steps: export
chips with contour-reinforced footprint labels, prepare_data, Pix2Pix fit, tune the footprint
settings on the validation chips, save and reload, predict the whole tile with predict_raster,
vectorize the footprints (touching ones separated along the outline class), score them against
the truth, and compare the ways of making footprints in both areas (metrics.json
"held_out_by_method", "training_area_by_method").

CPU-sized settings by default (about 5.5 minutes on 2 cores); the paper's sizes on a GPU.
Writes: show_batch.png, show_results.png, loss_graph.png, footprints.png, prediction.tif,
footprints.gpkg, metrics.json and the saved model folder model/.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # the demo writes figures to files

import geopandas as gpd  # noqa: E402
import rasterio  # noqa: E402
import torch  # noqa: E402
from rasterio.windows import Window, bounds  # noqa: E402
from shapely.geometry import box  # noqa: E402

from toolkit import Pix2Pix, datasets, export_training_data, prepare_data, vectorize, write_vector  # noqa: E402
from toolkit._fs import atomic_file  # noqa: E402
from toolkit.metrics import footprint_scores  # noqa: E402
from toolkit.raster import clip_raster  # noqa: E402
from toolkit.viz import plot_footprints  # noqa: E402

# The paper's lr on the CPU too: at 1e-3 the CPU model fitted the training area's buildings about
# half as well (object F1 0.20-0.25 against 0.39-0.56, 2026-12-04).
CPU = {"tile_size": 128, "stride": 64, "ngf": 32, "batch_size": 4, "epochs": 80, "lr": 2e-4}
GPU = {"tile_size": 256, "stride": 64, "ngf": 64, "batch_size": 4, "epochs": 100, "lr": 2e-4}
# TOOLKIT_QUICK=1, as for the notebooks: a tiny network and two epochs, to check every step (the
# test suite runs the demo so); the scores are then meaningless.
QUICK = {"tile_size": 64, "stride": 64, "ngf": 8, "batch_size": 8, "epochs": 2, "lr": 1e-3}
TRAIN_COLUMNS = 600  # the west 600 px train; the east 300 px are held out


def main(out: Path) -> dict:
    start = time.perf_counter()
    if os.environ.get("TOOLKIT_QUICK") == "1":
        settings = QUICK
    else:
        settings = GPU if torch.cuda.is_available() else CPU
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    work.mkdir(exist_ok=True)
    print(f"Sample data: {datasets.CREDIT}")
    sample = datasets.fetch("atlanta_buildings")
    truth = gpd.read_file(sample["footprints"])
    print(f"  {sample['image'].name}: 900 x 900 px, 0.5 m; {len(truth)} footprints")
    print(f"Settings ({'GPU' if torch.cuda.is_available() else 'CPU'}"
          f"{', quick' if settings is QUICK else ''}): {settings}")

    # 1. Training chips from the west part of the tile, footprint outlines as their own class.
    train_area = clip_raster(sample["image"], work / "train_area.tif", overwrite=True,
                             window=Window(0, 0, TRAIN_COLUMNS, 900))
    summary = export_training_data(train_area, out / "chips", in_class_data=sample["footprints"],
                                   tile_size=settings["tile_size"], stride=settings["stride"],
                                   contour_width=2, output_nofeature_tiles=False, overwrite=True)
    print(f"\n1. {summary}")

    # 2. DataLoaders.
    data = prepare_data(summary.out_folder, batch_size=settings["batch_size"], seed=0)
    print(f"2. {data}")
    _save(data.show_batch(rows=4), out / "show_batch.png")

    # 3. Train.
    # Buildings cover 2% of the tile: balance the L1 term between footprint and background.
    # Checkpoints go to work/, not into the chip folder, which a rerun's export replaces.
    model = Pix2Pix(data, ngf=settings["ngf"], ndf=settings["ngf"], class_balance=True,
                    working_dir=work / "models")
    print(f"3. {model}: fit({settings['epochs']})")
    model.fit(settings["epochs"], lr=settings["lr"])
    _save(model.plot_losses(), out / "loss_graph.png")
    _save(model.show_results(rows=4), out / "show_results.png")
    validation = model.compute_metrics()

    # 4. Footprint settings from the validation chips (object F1), saved with the model; then
    #    save, and reload as a user would later, without the data.
    tuned = model.tune_footprints()
    print(f"4. tuned footprint settings: threshold {tuned['threshold']}, boundary_threshold "
          f"{tuned['boundary_threshold']}, min_area {tuned['min_area']} m² (validation object F1 "
          f"{tuned['f1']:.3f}; {tuned['default_f1']:.3f} with the defaults)")
    emd = model.save(out / "model", overwrite=True)  # a rerun replaces the last run's model
    model = Pix2Pix.from_model(emd)
    print(f"   saved {emd.parent} and reloaded it")

    # 5. The whole tile, then one polygon per building: the prediction's tags name the outline
    #    band and the tuned settings, so vectorize needs no arguments.
    prediction = model.predict_raster(sample["image"], out / "prediction.tif", overwrite=True)
    footprints = vectorize(prediction, simplify_tolerance=0.25)
    write_vector(footprints, out / "footprints.gpkg", overwrite=True)
    print(f"5. {prediction.name}: scores for the whole tile; {len(footprints)} footprints -> footprints.gpkg")

    # 6. Scores on the held-out east third, for the footprints and for the ways of making them.
    with rasterio.open(prediction) as src:  # the two parts of the tile, in map coordinates
        east = box(*bounds(Window(TRAIN_COLUMNS, 0, src.width - TRAIN_COLUMNS, src.height), src.transform))
        west = box(*bounds(Window(0, 0, TRAIN_COLUMNS, src.height), src.transform))
    held_out = footprint_scores(prediction, footprints, truth, area=east)
    trained_on = footprint_scores(prediction, footprints, truth, area=west)
    tta = model.predict_raster(sample["image"], work / "prediction_tta.tif", tta=True, overwrite=True)
    variants = {  # name -> (score raster, footprints)
        "connected areas, threshold 0.5 (before outlines were used)":
            (prediction, vectorize(prediction, boundary_band=False, threshold=0.5, min_area=10.0,
                                   simplify_tolerance=0.25)),
        "outline watershed, defaults": (prediction, vectorize(prediction, threshold=0.5, boundary_threshold=0.5,
                                                              min_area=0.0, simplify_tolerance=0.25)),
        "outline watershed, tuned (footprints.gpkg)": (prediction, footprints),
        "+ regularized outlines": (prediction, vectorize(prediction, regularize=True)),
        "+ test-time augmentation": (tta, vectorize(tta, simplify_tolerance=0.25)),
    }
    # Both areas: held out, the model's generalisation limits every method; in the training area,
    # where it does find the buildings, the table shows what each way of making footprints adds.
    comparison = {name: footprint_scores(raster, polygons, truth, area=east)
                  for name, (raster, polygons) in variants.items()}
    comparison_west = {name: footprint_scores(raster, polygons, truth, area=west)
                       for name, (raster, polygons) in variants.items()}
    _save(plot_footprints(sample["image"], {"Predicted": footprints, "Ground truth": truth}, area=east),
          out / "footprints.png")
    metrics = {"held_out_east_third": held_out, "training_area_west": trained_on,
               "validation_chips": validation, "footprint_settings": tuned,
               "held_out_by_method": comparison, "training_area_by_method": comparison_west,
               "settings": settings,
               "device": "cuda" if torch.cuda.is_available() else "cpu",
               "seconds": round(time.perf_counter() - start, 1)}
    with atomic_file(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=2) + "\n")

    for title, scores in (("held-out east third (300 x 900 px, not seen in training)", held_out),
                          ("training area, west (600 x 900 px)", trained_on)):
        p, o = scores["pixel"], scores["object"]
        print(f"\nScores in the {title}:")
        print(f"  pixels:  IoU {p['iou']:.3f}, F1 {p['f1']:.3f}, precision {p['precision']:.3f}, "
              f"recall {p['recall']:.3f}")
        print(f"  objects: F1 {o['f1']:.3f} ({o['tp']} matched, {o['fp']} false, {o['fn']} missed; "
              "IoU >= 0.5)")
    print("\nObject F1 (IoU >= 0.5) by way of making footprints, held-out east third | training area:")
    for name in comparison:
        o, w = comparison[name]["object"], comparison_west[name]["object"]
        print(f"  {name:<58} {o['f1']:.3f} ({o['tp']:>2} of {o['tp'] + o['fn']:>2}, {o['fp']:>2} false) | "
              f"{w['f1']:.3f} ({w['tp']:>2} of {w['tp'] + w['fn']:>2}, {w['fp']:>2} false)")
    print(f"Validation chips: PSNR {validation['psnr']:.2f} dB, SSIM {validation['ssim']:.3f}, "
          f"IoU {validation['iou']:.3f}")
    print("\nWrote:")
    for path in sorted(out.iterdir()):
        if path.name != "work":
            kind = "folder" if path.is_dir() else f"{path.stat().st_size / 1024:.0f} KB"
            print(f"  {path}  ({kind})")
    print(f"\nDone in {metrics['seconds'] / 60:.1f} min.")
    return metrics


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

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
