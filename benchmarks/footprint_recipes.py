"""Footprints on ground the model has not seen: each training recipe scored on Banepa's east third.

    .venv/bin/python benchmarks/footprint_recipes.py RECIPE [RECIPE ...]   # names below
    .venv/bin/python benchmarks/footprint_recipes.py --list

The split is the demo's: the Banepa mosaic (0.5 m, ``datasets.fetch("banepa_buildings")``; set
``TOOLKIT_DATA_MIRROR`` offline) cut at two thirds of its width; the west part exported as 128 px
chips every 64 px with 2 px outlines (``contour_width=2``), its northern 192 rows the validation
strip (``prepare_data(validation_area=...)``), the east third held out. Every recipe trains
``Pix2Pix(ngf=32, ndf=32, class_balance=True)`` from seed 0, tunes the footprint settings on the
strip, predicts the whole mosaic and scores the footprints in the east third (pixel IoU, object F1
at IoU >= 0.5) and in the training area. A recipe may change the model's keywords (``"model"``),
the mosaic's ground pixel size (``"resolution"``; the validation strip stays 96 m), the chips
(``"tile_size"``, ``"stride"``) and the outline width (``"contour_width"``). ``--probe 60 90`` also
scores the weights at those epochs. Results go to ``benchmarks/results/footprints-<recipe>.json``
(not committed) and one line each to stdout; the numbers are in benchmarks/README.md. Run it alone
on the cores: a second job slows every step many times over.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import geopandas as gpd
import torch
from fastai.callback.core import Callback

from toolkit import Pix2Pix, datasets, export_training_data, prepare_data, vectorize
from toolkit.data.split import split_scene
from toolkit.metrics import footprint_scores
from toolkit.raster import clip_raster

NO_EXTRA_AUGMENTATION = {"max_lighting": 0.0, "max_rotate": 0.0, "max_zoom": 1.0}
# name -> (what it is, settings); data: prepare_data keywords, fit: fit keywords
RECIPES = {
    "issue_baseline": ("the issue's measurement: GAN + L1 at the paper's lr, flips and quarter turns only, "
                       "best epoch by validation L1", {"gan_weight": 1.0, "lr": 2e-4, "epochs": 40,
                                                       "data": NO_EXTRA_AUGMENTATION, "fit": {}}),
    "longer": ("the same, 120 epochs", {"gan_weight": 1.0, "lr": 2e-4, "epochs": 120,
                                        "data": NO_EXTRA_AUGMENTATION, "fit": {}}),
    "lighting": ("+ brightness, contrast and colour changes (max_lighting 0.3), best epoch by footprint F1",
                 {"gan_weight": 1.0, "lr": 2e-4, "epochs": 60,
                  "data": {"max_lighting": 0.3, "max_rotate": 0.0, "max_zoom": 1.0},
                  "fit": {"monitor": "footprint_f1"}}),
    "turns": ("+ turns up to 30 degrees, zooms up to 1.2", {"gan_weight": 1.0, "lr": 2e-4, "epochs": 60,
              "data": {"max_lighting": 0.3, "max_rotate": 30.0, "max_zoom": 1.2}, "fit": {"monitor": "footprint_f1"}}),
    "turns_120": ("the same, 120 epochs", {"gan_weight": 1.0, "lr": 2e-4, "epochs": 120,
                  "data": {"max_lighting": 0.3, "max_rotate": 30.0, "max_zoom": 1.2}, "fit": {"monitor": "footprint_f1"}}),
    "gan_lr1e3": ("GAN + L1 at lr 1e-3, turns and zooms", {"gan_weight": 1.0, "lr": 1e-3, "epochs": 120,
                  "data": {"max_lighting": 0.3, "max_rotate": 30.0, "max_zoom": 1.2}, "fit": {"monitor": "footprint_f1"}}),
    "l1_lr2e4": ("L1 only (gan_weight 0), lighting, the paper's lr", {"gan_weight": 0.0, "lr": 2e-4, "epochs": 240,
                 "data": {"max_lighting": 0.3, "max_rotate": 0.0, "max_zoom": 1.0}, "fit": {"monitor": "footprint_f1"}}),
    "l1_lr1e3": ("L1 only at lr 1e-3, turns and zooms", {"gan_weight": 0.0, "lr": 1e-3, "epochs": 120,
                 "data": {"max_lighting": 0.3, "max_rotate": 30.0, "max_zoom": 1.2}, "fit": {"monitor": "footprint_f1"}}),
    "l1_lr2e3": ("L1 only at lr 2e-3, turns and zooms, 160 epochs", {"gan_weight": 0.0, "lr": 2e-3, "epochs": 160,
                 "data": {"max_lighting": 0.3, "max_rotate": 30.0, "max_zoom": 1.2}, "fit": {"monitor": "footprint_f1"}}),
    "l1_lr2e3_last": ("the same, the last epoch kept (checkpoint=False)", {"gan_weight": 0.0, "lr": 2e-3, "epochs": 160,
                      "data": {"max_lighting": 0.3, "max_rotate": 30.0, "max_zoom": 1.2}, "fit": {"checkpoint": False}}),
    "l1_mild": ("L1 only at lr 2e-3, milder turns and zooms (15 degrees, 1.1: the defaults), last epoch",
                {"gan_weight": 0.0, "lr": 2e-3, "epochs": 160, "data": {}, "fit": {"checkpoint": False}}),
    "demo": ("the demo's CPU recipe: the same, 220 epochs", {"gan_weight": 0.0, "lr": 2e-3, "epochs": 220,
             "data": {}, "fit": {"checkpoint": False}}),
    "demo_instance": ("the demo's recipe with instance norm", {"gan_weight": 0.0, "lr": 2e-3, "epochs": 220,
                      "data": {}, "fit": {"checkpoint": False}, "model": {"norm": "instance"}}),
    "demo_nodropout": ("the demo's recipe without the U-Net's dropout", {"gan_weight": 0.0, "lr": 2e-3, "epochs": 220,
                       "data": {}, "fit": {"checkpoint": False}, "model": {"dropout": False}}),
    "demo_bce_dice": ("the demo's recipe with cross-entropy plus Dice instead of balanced L1",
                      {"gan_weight": 0.0, "lr": 2e-3, "epochs": 220, "data": {}, "fit": {"checkpoint": False},
                       "model": {"mask_loss": "bce_dice", "class_balance": False}}),
    "bce_dice_04m": ("cross-entropy plus Dice on a 0.4 m mosaic, as many steps (140 epochs)",
                     {"gan_weight": 0.0, "lr": 2e-3, "epochs": 140, "data": {}, "fit": {"checkpoint": False},
                      "model": {"mask_loss": "bce_dice", "class_balance": False}, "resolution": 0.4}),
    "bce_dice_03m": ("the same on a 0.3 m mosaic, 3 px outlines, as many steps (80 epochs)",
                     {"gan_weight": 0.0, "lr": 2e-3, "epochs": 80, "data": {}, "fit": {"checkpoint": False},
                      "model": {"mask_loss": "bce_dice", "class_balance": False}, "resolution": 0.3, "contour_width": 3}),
    "bce_dice_03m_256": ("the same with 256 px chips every 128 px (77 m of context instead of 38 m), 80 epochs",
                         {"gan_weight": 0.0, "lr": 2e-3, "epochs": 80, "data": {}, "fit": {"checkpoint": False},
                          "model": {"mask_loss": "bce_dice", "class_balance": False}, "resolution": 0.3,
                          "contour_width": 3, "tile_size": 256, "stride": 128}),
    "demo_03m": ("the demo's CPU recipe: the same, 120 epochs", {
        "gan_weight": 0.0, "lr": 2e-3, "epochs": 120, "data": {}, "fit": {"checkpoint": False},
        "model": {"mask_loss": "bce_dice", "class_balance": False}, "resolution": 0.3, "contour_width": 3,
        "tile_size": 256, "stride": 128}),
}
TRAIN_SHARE, VALIDATION_ROWS = 2 / 3, 192


class _Probe(Callback):
    """Scores the weights at the given epochs (1-based), during the fit."""

    order = 90

    def __init__(self, epochs, score) -> None:
        self.epochs, self.score, self.results = set(epochs), score, {}

    def after_epoch(self) -> None:
        if self.epoch + 1 in self.epochs:
            self.results[self.epoch + 1] = self.score(f"epoch {self.epoch + 1}", tta=False)


def run(name: str, out: Path, probes: list[int], tta: bool) -> dict:
    what, recipe = RECIPES[name]
    work = out / f"footprints-{name}"
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    resolution = recipe.get("resolution", 0.5)
    sample = datasets.fetch("banepa_buildings", resolution=resolution)
    truth = gpd.read_file(sample["footprints"])
    split = split_scene(sample["image"], TRAIN_SHARE, round(VALIDATION_ROWS * 0.5 / resolution))
    east, west, strip = split.held_out, split.train, split.validation
    train_area = clip_raster(sample["image"], work / "train_area.tif", window=split.train_window, overwrite=True)
    summary = export_training_data(train_area, work / "chips", in_class_data=sample["footprints"], tile_size=recipe.get("tile_size", 128),
                                   stride=recipe.get("stride", 64), contour_width=recipe.get("contour_width", 2), output_nofeature_tiles=False,
                                   overwrite=True, progress=False)
    data = prepare_data(summary.out_folder, batch_size=4, seed=0, validation_area=strip, **recipe["data"])
    torch.manual_seed(0)
    model = Pix2Pix(data, ngf=32, ndf=32, gan_weight=recipe["gan_weight"], working_dir=work / "models",
                    **({"class_balance": True} | recipe.get("model", {})))

    def score(tag: str, tta: bool) -> dict:
        tuned = model.tune_footprints()
        prediction = model.predict_raster(sample["image"], work / "prediction.tif", tta=tta, overwrite=True,
                                          progress=False)
        footprints = vectorize(prediction, simplify_tolerance=0.25)
        result = {"tuned": tuned}
        for area_name, area in (("held_out", east), ("training_area", west)):
            s = footprint_scores(prediction, footprints, truth, area=area)
            result[area_name] = {"pixel_iou": round(s["pixel"]["iou"], 4), "object_f1": round(s["object"]["f1"], 4),
                                 "tp": s["object"]["tp"], "fp": s["object"]["fp"], "fn": s["object"]["fn"]}
        print(f"{name} {tag}{' tta' if tta else ''}: held out IoU {result['held_out']['pixel_iou']:.3f}, "
              f"F1 {result['held_out']['object_f1']:.3f}; training area F1 "
              f"{result['training_area']['object_f1']:.3f}", flush=True)
        return result

    probe = _Probe(probes, score)
    fit_start = time.perf_counter()
    with model.learn.no_bar():
        model.fit(recipe["epochs"], lr=recipe["lr"], callbacks=[probe], **recipe["fit"])
    fit_seconds = time.perf_counter() - fit_start
    model.save("final", compute_metrics=False, overwrite=True)
    result = {"recipe": name, "what": what, "settings": {k: v for k, v in recipe.items()},
              "train_chips": len(data.train_ds), "validation_chips": len(data.valid_ds),
              "fit_seconds": round(fit_seconds, 1), "probes": probe.results, "final": score("final", tta=False)}
    if tta:
        result["final_tta"] = score("final", tta=True)
    result["seconds"] = round(time.perf_counter() - start, 1)
    (out / f"footprints-{name}.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipes", nargs="*", help=f"one or more of {list(RECIPES)}")
    parser.add_argument("--list", action="store_true", help="list the recipes")
    parser.add_argument("--probe", type=int, nargs="*", default=[], help="also score at these epochs")
    parser.add_argument("--tta", action="store_true", help="also score the final weights with test-time augmentation")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    if args.list or not args.recipes:
        for name, (what, recipe) in RECIPES.items():
            print(f"{name:16} {what}")
        return
    unknown = [r for r in args.recipes if r not in RECIPES]
    if unknown:
        parser.error(f"unknown recipe(s) {unknown}; see --list")
    for name in args.recipes:
        run(name, args.out, args.probe, args.tta)


if __name__ == "__main__":
    main()
