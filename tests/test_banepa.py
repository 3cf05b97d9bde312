"""datasets.fetch("banepa_buildings"): the real download path (pooch, checksums, the mosaic)
against a web server on 127.0.0.1 that serves a copy of the public files, the local mirror
folder, and what a corrupted or unreachable source leaves behind (nothing)."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio

from toolkit import banepa, datasets
from toolkit._fs import sha256

TILE = "oam/OAM-386690-220241-19.tif"


@pytest.fixture(scope="module")
def mirror(banepa_mirror) -> Path:
    """The mirror folder (``TOOLKIT_DATA_MIRROR``), laid out as ``banepa/oam/...``."""
    return banepa_mirror


@pytest.fixture()
def serve():
    """``serve(folder)`` -> the address of a web server on 127.0.0.1 serving ``folder``."""
    servers = []

    def start(folder: Path) -> str:
        handler = functools.partial(_QuietHandler, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def _cache_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_fetch_downloads_verifies_and_mosaics_over_http(mirror, serve, tmp_path):
    url = serve(mirror)
    sample = datasets.fetch("banepa_buildings", data_dir=tmp_path / "cache", mirror=url)
    assert set(sample) == {"image", "footprints", "tiles", "metadata"}
    assert sample.credit == datasets.credit("banepa_buildings")
    assert "OpenAerialMap" in sample.credit and "OpenStreetMap" in sample.credit
    raw = tmp_path / "cache" / "banepa_buildings" / "raw"
    assert len(list((raw / "oam").glob("*.tif"))) == 48 and len(list((raw / "oam").glob("*.aux.xml"))) == 48
    # every downloaded file is the pinned one
    for name, digest in banepa.FILES.items():
        assert sha256(raw / name) == digest.split(":")[1], name

    with rasterio.open(sample["image"]) as src:
        assert src.crs.to_epsg() == 32645 and src.res == (0.5, 0.5)
        assert (src.width, src.height, src.count) == (826, 1089, 3)
        assert src.nodata == 0 and src.dtypes[0] == "uint8"
        data = src.read()
        bounds = src.bounds
    valid = (data != 0).any(axis=0).mean()
    assert 0.97 < valid < 0.985  # 97.7% of the grid holds imagery
    assert data[:, (data != 0).any(axis=0)].std() > 20  # an image, not a blank

    footprints = gpd.read_file(sample["footprints"])
    assert len(footprints) == 1466 and footprints.crs.to_epsg() == 32645
    assert footprints.geometry.is_valid.all() and set(footprints.geom_type) <= {"Polygon", "MultiPolygon"}
    x0, y0, x1, y1 = footprints.total_bounds
    assert x0 >= bounds.left - 1e-6 and x1 <= bounds.right + 1e-6
    assert y0 >= bounds.bottom - 1e-6 and y1 <= bounds.top + 1e-6


def test_second_fetch_reuses_the_cache(mirror, serve, tmp_path):
    cache = tmp_path / "cache"
    datasets.fetch("banepa_buildings", data_dir=cache, mirror=serve(mirror))
    stamp = (cache / "banepa_buildings" / banepa.MOSAIC).stat().st_mtime_ns
    # the server is gone: everything must come from the cache, the mosaic is not rebuilt
    again = datasets.fetch("banepa_buildings", data_dir=cache, mirror="http://127.0.0.1:9/")
    assert again["image"].stat().st_mtime_ns == stamp


def test_a_mosaic_at_another_resolution_is_built_beside_the_default(mirror, tmp_path, monkeypatch):
    monkeypatch.setenv(banepa.MIRROR_ENV, str(mirror))
    cache = tmp_path / "cache"
    default = datasets.fetch("banepa_buildings", data_dir=cache)
    fine = datasets.fetch("banepa_buildings", data_dir=cache, resolution=0.4)
    assert fine["image"] != default["image"] and default["image"].is_file()
    with rasterio.open(default["image"]) as a, rasterio.open(fine["image"]) as b:
        assert b.res == (0.4, 0.4) and b.crs == a.crs and b.nodata == 0
        assert abs(b.width * 0.4 - a.width * 0.5) < 1 and abs(b.height * 0.4 - a.height * 0.5) < 1
        assert b.transform.c == a.transform.c and b.transform.f == a.transform.f
    assert len(gpd.read_file(fine["footprints"])) == len(gpd.read_file(default["footprints"])) == 1466
    for bad in (0.1, 0, "0.4", True):
        with pytest.raises(ValueError, match="resolution"):
            datasets.fetch("banepa_buildings", data_dir=tmp_path / "bad", resolution=bad)
    assert not (tmp_path / "bad").exists()  # refused before anything was fetched
    with pytest.raises(ValueError, match="resolution"):
        datasets.fetch("atlanta_buildings", resolution=0.4)


def test_a_corrupted_download_fails_its_checksum_and_leaves_nothing(mirror, serve, tmp_path):
    served = tmp_path / "served"
    shutil.copytree(mirror / banepa.MIRROR_FOLDER, served / banepa.MIRROR_FOLDER)
    tile = served / banepa.MIRROR_FOLDER / TILE
    tile.chmod(0o644)
    data = bytearray(tile.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    tile.write_bytes(bytes(data))

    cache = tmp_path / "cache"
    with pytest.raises(datasets.SampleDataError, match="checksum") as err:
        datasets.fetch("banepa_buildings", data_dir=cache, mirror=serve(served))
    assert TILE in str(err.value)  # the message names the address
    files = _cache_files(cache / "banepa_buildings")
    assert not any(Path(f).name.startswith(Path(TILE).name) for f in files), files
    assert not any("tmp" in f or "part" in f for f in files), files
    assert not (cache / "banepa_buildings" / banepa.MOSAIC).exists()


def test_a_mirror_folder_is_checked_before_it_is_copied(mirror, tmp_path, monkeypatch):
    monkeypatch.setenv(banepa.MIRROR_ENV, str(mirror))
    sample = datasets.fetch("banepa_buildings", data_dir=tmp_path / "ok")
    assert sample["image"].is_file()

    damaged = tmp_path / "damaged"
    shutil.copytree(mirror / banepa.MIRROR_FOLDER, damaged / banepa.MIRROR_FOLDER)
    (damaged / banepa.MIRROR_FOLDER / banepa.FOOTPRINTS).chmod(0o644)
    (damaged / banepa.MIRROR_FOLDER / banepa.FOOTPRINTS).write_text("{}")
    monkeypatch.setenv(banepa.MIRROR_ENV, str(damaged))
    with pytest.raises(datasets.SampleDataError, match="does not match"):
        datasets.fetch("banepa_buildings", data_dir=tmp_path / "bad")
    assert not (tmp_path / "bad" / "banepa_buildings" / "raw" / banepa.FOOTPRINTS).exists()


def test_offline_without_a_mirror_names_the_address_and_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv(banepa.MIRROR_ENV, raising=False)
    # the pinned source, as if the internet were out of reach: a closed port on this machine
    monkeypatch.setattr(banepa, "BASE_URL", "http://127.0.0.1:9/fAIr-models/data/sample/")
    with pytest.raises(datasets.SampleDataError) as err:
        datasets.fetch("banepa_buildings", data_dir=tmp_path)
    message = str(err.value)
    assert "http://127.0.0.1:9/fAIr-models/data/sample/" in message and banepa.MIRROR_ENV in message
    assert _cache_files(tmp_path) == []


def test_the_source_addresses_are_pinned_to_one_commit():
    urls = {banepa.source_url(name) for name in banepa.FILES}
    assert len(urls) == len(banepa.FILES) == 98
    assert all(u.startswith(f"https://raw.githubusercontent.com/hotosm/fAIr-models/{banepa.COMMIT}/") for u in urls)
    assert banepa.source_url(TILE).endswith("/data/sample/train/oam/OAM-386690-220241-19.tif")
    assert np.all([d.startswith("sha256:") and len(d) == 71 for d in banepa.FILES.values()])
