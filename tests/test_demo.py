"""`make demo` (scripts/demo.py) runs end to end in quick mode and writes every file it promises."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import rasterio

DEMO = Path(__file__).resolve().parents[1] / "scripts" / "demo.py"


def test_demo_writes_every_file(atlanta, tmp_path):
    out = tmp_path / "demo_output"
    env = os.environ | {"TOOLKIT_QUICK": "1", "MPLBACKEND": "Agg"}
    run = subprocess.run([sys.executable, os.fspath(DEMO), os.fspath(out)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Scores in the held-out east third" in run.stdout and "Wrote:" in run.stdout

    for name in ("show_batch.png", "show_results.png", "loss_graph.png", "footprints.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG"), name
    with rasterio.open(atlanta["image"]) as src, rasterio.open(out / "prediction.tif") as pred:
        assert (pred.crs, pred.transform, pred.shape) == (src.crs, src.transform, src.shape)
    footprints = gpd.read_file(out / "footprints.gpkg")
    assert footprints.crs == pred.crs
    metrics = json.loads((out / "metrics.json").read_text())
    for area in ("held_out_east_third", "training_area_west"):
        assert set(metrics[area]) == {"pixel", "object"}
        assert 0.0 <= metrics[area]["pixel"]["f1"] <= 1.0
    assert {"psnr", "ssim", "iou"} <= set(metrics["validation_chips"])
    assert {"threshold", "boundary_threshold", "min_area", "f1"} <= set(metrics["footprint_settings"])
    for table in ("held_out_by_method", "training_area_by_method"):
        assert len(metrics[table]) == 5
        assert all(0.0 <= m["object"]["f1"] <= 1.0 for m in metrics[table].values())
    assert "by way of making footprints" in run.stdout
    assert (out / "model" / "model.emd").is_file() and (out / "model" / "model.dlpk").is_file()
    # nothing half-written left behind
    assert not [p for p in out.rglob("*") if ".partial" in p.name]
