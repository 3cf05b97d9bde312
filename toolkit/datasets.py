"""Real sample imagery for the tests, the demo and the notebooks.

Two sources. ``"banepa_buildings"`` (drone imagery of Banepa, Nepal, with 1,466 OpenStreetMap
footprints) is downloaded from pinned public addresses with checksums, or copied from a local
mirror named by ``$TOOLKIT_DATA_MIRROR``, and mosaicked once (:mod:`toolkit.banepa`). The other
samples are SpaceNet imagery and labels (CC BY-SA 4.0, https://spacenet.ai) that ship inside
the ``solaris==0.4.0`` wheel on the Python Package Index. :func:`fetch` downloads that wheel once
with pip, checks its sha256, and extracts only the files a sample needs into a cache folder
(``$TOOLKIT_DATA``, else ``~/.cache/toolkit``). The second call returns at once.

This module uses the standard library only, so it also runs under a bare interpreter.

Why pip and not a URL: pip already knows the user's index, proxy and certificates. The wheel's
metadata holds a malformed requirement (``gdal>=3.0.2geopandas>=0.7.0``) that pip 24.1 and later
refuse ("No matching distribution found"). When the user's own pip refuses, the download runs again
with pip 24.0, itself fetched as a wheel by the user's pip and run straight from that wheel.

Layer: data.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from toolkit._fs import sha256

__all__ = ["Sample", "SampleDataError", "available", "cache_dir", "credit", "describe", "fetch"]

WHEEL_REQUIREMENT = "solaris==0.4.0"
WHEEL_NAME = "solaris-0.4.0-py3-none-any.whl"
WHEEL_SHA256 = "09445946221410ebb2ae807580cf7dea9fe3c9aa3bf045947b61a162d2d3a8df"
# The newest pip that still accepts the wheel's malformed metadata.
FALLBACK_PIP = "pip==24.0"
FALLBACK_PIP_WHEEL = "pip-24.0-py3-none-any.whl"

_DATA = "solaris/data/"
_PREPROC = _DATA + "preproc_tutorial/"

# name -> {key: member of the wheel}
_SAMPLES: dict[str, dict[str, str]] = {
    "atlanta_buildings": {
        "image": _DATA + "sample_geotiff.tif",
        "footprints": _DATA + "geotiff_labels.geojson",
    },
    "rotterdam": {
        **{f"multispectral_{i}": _PREPROC + f"ms{i}.tif" for i in (1, 2, 3)},
        **{f"panchromatic_{i}": _PREPROC + f"pan{i}.tif" for i in (1, 2, 3)},
        "sar": _PREPROC + "sar_masked.tif",
        "rgb": _PREPROC + "rgb_unmasked.tif",
        **{f"sar_{pol}": _PREPROC + f"sar_{pol}.tif" for pol in ("hh", "hv", "vh", "vv")},
    },
    "vegas_roads": {
        "image": _DATA + "road_mask_input.tif",
        "mask": _DATA + "sample_road_raster_mask.tif",
        "roads": _DATA + "sample_roads_for_masking.geojson",
    },
    "nebraska_landsat": {
        "image": _DATA + "nebraska_landsat5_with_nodata_wgs84.tif",
        "fields": _DATA + "nebraska_wgs84_with_nodata_labels.geojson",
    },
}

_DESCRIPTIONS: dict[str, str] = {
    "atlanta_buildings": (
        "SpaceNet Atlanta: panchromatic GeoTIFF, 900 x 900 px uint16, 0.5 m, EPSG:32616, nodata 0 "
        "('image'), and 43 building footprints as GeoJSON ('footprints')."
    ),
    "rotterdam": (
        "SpaceNet 6 Rotterdam, EPSG:32631: three co-registered scenes as 4-band multispectral "
        "300 x 300 px at 1 m ('multispectral_1..3', float64) and panchromatic 600 x 600 px at "
        "0.5 m ('panchromatic_1..3', uint16); a SAR intensity image, 4 bands float32 with NaN "
        "outside the swath ('sar'), and the matching RGB image, 3 bands uint8 ('rgb'), both "
        "200 x 200 px at 4.5 m; single-look complex SAR polarisations 'sar_hh', 'sar_hv', "
        "'sar_vh', 'sar_vv' (200 x 200 px, 2.5 m, complex64)."
    ),
    "vegas_roads": (
        "SpaceNet Las Vegas roads, EPSG:4326: a 1300 x 1300 px uint16 image ('image'), its road "
        "mask, uint8 0/255 ('mask'), and the road centre lines as GeoJSON ('roads')."
    ),
    "nebraska_landsat": (
        "Landsat 5 over Nebraska, 2846 x 4627 px int16, EPSG:4326, nodata -9999 ('image'), with "
        "9 field polygons as GeoJSON ('fields')."
    ),
}

CREDIT = "SpaceNet sample data (CC BY-SA 4.0), shipped in the solaris 0.4.0 wheel."

# samples downloaded from pinned addresses (not from the wheel): name -> module that fetches them
_REMOTE = {"banepa_buildings": "toolkit.banepa"}


class Sample(dict):
    """What :func:`fetch` returns: ``{role: path}`` (a plain dict of :class:`~pathlib.Path` s),
    plus the sample's ``name`` and the ``credit`` line to show wherever its data or figures made
    from it appear."""

    def __init__(self, name: str, paths: dict[str, Path], credit: str) -> None:
        super().__init__(paths)
        self.name = name
        self.credit = credit


class SampleDataError(RuntimeError):
    """A sample could not be downloaded, verified or read."""


def available() -> list[str]:
    """Names accepted by :func:`fetch`."""
    return sorted([*_SAMPLES, *_REMOTE])


def describe(name: str) -> str:
    """One paragraph on what the sample ``name`` holds."""
    _check_name(name)
    return _remote(name).DESCRIPTION if name in _REMOTE else _DESCRIPTIONS[name]


def credit(name: str) -> str:
    """The attribution line of sample ``name`` (its licences), for figures and reports."""
    _check_name(name)
    return _remote(name).CREDIT if name in _REMOTE else CREDIT


def _remote(name: str):
    import importlib

    return importlib.import_module(_REMOTE[name])


def cache_dir() -> Path:
    """The folder samples are kept in: ``$TOOLKIT_DATA``, else ``~/.cache/toolkit``."""
    env = os.environ.get("TOOLKIT_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "toolkit"


def fetch(name: str, *, data_dir: str | os.PathLike | None = None,
          mirror: str | os.PathLike | None = None, resolution: float | None = None) -> Sample:
    """Make sample ``name`` available on disk and return its files by role.

    Args:
        name: one of :func:`available`, e.g. ``"banepa_buildings"`` or ``"atlanta_buildings"``.
        data_dir: cache folder; default :func:`cache_dir`.
        mirror: for ``"banepa_buildings"``: a folder or ``http(s)://`` address holding a copy of
            the files laid out as ``banepa/oam/...`` (default ``$TOOLKIT_DATA_MIRROR``); files
            from it are checked against the same SHA-256 as downloads. Without one the files are
            downloaded from their pinned public addresses.
        resolution: for ``"banepa_buildings"``: the mosaic's ground pixel size in metres
            (default 0.5; from 0.15, the tiles being about 0.13 m), built once per size.

    Returns:
        A :class:`Sample`: ``{role: path}``, e.g. ``{"image": .../sample_geotiff.tif,
        "footprints": ...}``, with ``.credit``. ``"banepa_buildings"`` gives ``"image"`` (the
        0.5 m UTM mosaic, GeoTIFF), ``"footprints"`` (GeoPackage in its CRS), ``"tiles"`` (the
        folder of the original tiles) and ``"metadata"`` (the source's STAC item).

    Raises:
        SampleDataError: the files could not be downloaded or failed their checksum; the message
            names the address and what to do offline (the file to put in place, or
            ``TOOLKIT_DATA_MIRROR``). Nothing unverified is left in the cache.
    """
    _check_name(name)
    root = Path(data_dir).expanduser() if data_dir is not None else cache_dir()
    folder = root / name
    if name in _REMOTE:
        source = _remote(name)
        mirror = mirror if mirror is not None else (os.environ.get(source.MIRROR_ENV) or None)
        if resolution is not None:
            source.check_resolution(resolution)  # before anything is fetched
        raw = source.fetch_files(folder / "raw", mirror, SampleDataError)
        return Sample(name, source.build(raw, folder, source.RESOLUTION if resolution is None else resolution),
                      source.CREDIT)
    if mirror is not None or resolution is not None:
        raise ValueError(f"mirror= and resolution= apply to the downloaded samples ({', '.join(_REMOTE)}); "
                         f"{name!r} comes from the {WHEEL_NAME} wheel (TOOLKIT_DATA names its folder).")
    members = _SAMPLES[name]
    paths = {key: folder / Path(member).name for key, member in members.items()}
    if all(p.is_file() for p in paths.values()):
        return Sample(name, paths, CREDIT)

    wheel = _ensure_wheel(root)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(wheel) as archive:
            for key, member in members.items():
                if paths[key].is_file():
                    continue
                # Extract under a temporary name, then rename: a file that exists is complete.
                tmp = paths[key].with_name(paths[key].name + ".part")
                with archive.open(member) as fin, open(tmp, "wb") as fout:
                    shutil.copyfileobj(fin, fout)
                os.replace(tmp, paths[key])
    except (zipfile.BadZipFile, KeyError) as err:
        raise SampleDataError(f"{wheel}: cannot extract the '{name}' sample ({err}).") from err
    return Sample(name, paths, CREDIT)


def _check_name(name: str) -> None:
    if name not in _SAMPLES and name not in _REMOTE:
        raise KeyError(f"Unknown sample {name!r}; available: {', '.join(available())}.")


def _ensure_wheel(root: Path) -> Path:
    """Return the verified sample wheel in ``root``, downloading it if needed."""
    wheel = root / WHEEL_NAME
    if wheel.is_file():
        if sha256(wheel) == WHEEL_SHA256:
            return wheel
        wheel.unlink()  # a damaged or foreign file: fetch it again
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp:
        downloaded = _download(Path(tmp))
        digest = sha256(downloaded)
        if digest != WHEEL_SHA256:
            raise SampleDataError(
                f"The downloaded {WHEEL_NAME} has sha256 {digest}, expected {WHEEL_SHA256}. "
                + _manual_instructions(root)
            )
        os.replace(downloaded, wheel)
    return wheel


def _pip_download(pip: list[str], requirement: str, dest: Path) -> subprocess.CompletedProcess:
    cmd = [*pip, "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "--no-input", "--quiet", "--dest", str(dest), requirement]
    return subprocess.run(cmd, capture_output=True, text=True)


def _download(dest: Path) -> Path:
    """Download the wheel into ``dest`` with the user's pip, else with pip 24.0."""
    user_pip = [sys.executable, "-m", "pip"]
    result = _pip_download(user_pip, WHEEL_REQUIREMENT, dest)
    if result.returncode == 0 and (dest / WHEEL_NAME).is_file():
        return dest / WHEEL_NAME
    failures = [f"pip: {_tail(result)}"]

    # The user's pip may be 24.1 or newer, which refuses this wheel: fetch pip 24.0 with it
    # and run that pip from its wheel (a wheel holding pure Python is importable as a zip).
    bootstrap = _pip_download(user_pip, FALLBACK_PIP, dest)
    old_pip = dest / FALLBACK_PIP_WHEEL
    if bootstrap.returncode == 0 and old_pip.is_file():
        result = _pip_download([sys.executable, str(old_pip / "pip")], WHEEL_REQUIREMENT, dest)
        if result.returncode == 0 and (dest / WHEEL_NAME).is_file():
            return dest / WHEEL_NAME
        failures.append(f"{FALLBACK_PIP}: {_tail(result)}")
    else:
        failures.append(f"fetching {FALLBACK_PIP}: {_tail(bootstrap)}")
    raise SampleDataError(
        f"Could not download the sample data wheel {WHEEL_NAME} with pip.\n"
        + "\n".join(failures) + "\n" + _manual_instructions(dest.parent)
    )


def _tail(result: subprocess.CompletedProcess, lines: int = 3) -> str:
    text = (result.stderr or result.stdout or "").strip().splitlines()
    return " | ".join(text[-lines:]) or f"exit code {result.returncode}"


def _manual_instructions(root: Path) -> str:
    return (
        f"To install it by hand, download {WHEEL_NAME} (project 'solaris', version 0.4.0, from the "
        f"Python Package Index, e.g. 'pip download --no-deps {WHEEL_REQUIREMENT}' with pip 24.0 or "
        f"older) on a machine that can reach the index, and put it at {root / WHEEL_NAME} "
        f"(or set TOOLKIT_DATA to the folder that holds it). Expected sha256: {WHEEL_SHA256}."
    )
