"""`make demo` (scripts/demo.py) runs end to end in quick mode and writes every file it promises."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import shutil

import geopandas as gpd
import rasterio

from toolkit import banepa as banepa_source
from toolkit import datasets

DEMO = Path(__file__).resolve().parents[1] / "scripts" / "demo.py"


def _run_demo(out: Path, **env) -> subprocess.CompletedProcess:
    env = os.environ | {"TOOLKIT_QUICK": "1", "MPLBACKEND": "Agg"} | env
    run = subprocess.run([sys.executable, os.fspath(DEMO), os.fspath(out)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Scores in the held-out east third" in run.stdout and "Wrote:" in run.stdout
    return run


def test_demo_writes_every_file(banepa, tmp_path):
    out = tmp_path / "demo_output"
    run = _run_demo(out)

    for name in ("show_batch.png", "show_results.png", "loss_graph.png", "footprints.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG"), name
    with rasterio.open(banepa["image"]) as src, rasterio.open(out / "prediction.tif") as pred:
        assert (pred.crs, pred.transform, pred.shape) == (src.crs, src.transform, src.shape)
    footprints = gpd.read_file(out / "footprints.gpkg")
    assert footprints.crs == pred.crs
    metrics = json.loads((out / "metrics.json").read_text())
    for area in ("held_out_east_third", "training_area_west"):
        assert set(metrics[area]) == {"pixel", "object"}
        assert 0.0 <= metrics[area]["pixel"]["f1"] <= 1.0
    assert {"psnr", "ssim", "iou"} <= set(metrics["validation_chips"])
    assert {"threshold", "boundary_threshold", "min_area", "marker_erosion", "f1"} <= set(metrics["footprint_settings"])
    assert metrics["sample"] == "banepa_buildings" and metrics["credit"] == banepa.credit
    assert metrics["fallback_reason"] is None and banepa.credit in run.stdout
    # the validation strip: its own chips, none shared with training
    assert metrics["split"]["validation_chips"] > 0 and metrics["split"]["train_chips"] > 0
    for table in ("held_out_by_method", "training_area_by_method"):
        assert len(metrics[table]) == 5
        assert all(0.0 <= m["object"]["f1"] <= 1.0 for m in metrics[table].values())
    assert "by way of making footprints" in run.stdout
    assert (out / "model" / "model.emd").is_file() and (out / "model" / "model.dlpk").is_file()
    # nothing half-written left behind
    assert not [p for p in out.rglob("*") if ".partial" in p.name]


def test_demo_says_so_and_runs_on_atlanta_when_banepa_cannot_be_fetched(solaris_wheel, tmp_path):
    """Offline and no mirror: the demo names the failure, uses Atlanta and says which it used."""
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(solaris_wheel, cache / datasets.WHEEL_NAME)  # Atlanta comes from the wheel, offline
    out = tmp_path / "demo_output"
    # a mirror address where nothing answers: no Banepa (and no internet on this machine either)
    run = _run_demo(out, TOOLKIT_DATA=os.fspath(cache), TOOLKIT_DATA_MIRROR="http://127.0.0.1:9/")
    assert "could not be fetched" in run.stdout and "Atlanta" in run.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["sample"] == "atlanta_buildings" and "127.0.0.1:9" in metrics["fallback_reason"]
    assert banepa_source.MIRROR_ENV in metrics["fallback_reason"] or "banepa" in metrics["fallback_reason"]
    assert not (cache / "banepa_buildings" / banepa_source.MOSAIC).exists()
