"""The Banepa sample behind ``datasets.fetch("banepa_buildings")``: download, verify, mosaic.

Banepa, Nepal: 48 zoom-19 web-map tiles (512 x 512 px, RGB uint8, JPEG-compressed GeoTIFF with
its georeferencing in a ``.tif.aux.xml`` side file) cut from OpenAerialMap drone imagery (about
0.13 m), with 1,466 building footprints drawn in OpenStreetMap; packaged by HOT's fAIr. The files
are downloaded from their public source, pinned to one commit, with ``pooch`` (the field's data
fetcher), each checked against its SHA-256 in ``registry/banepa.txt``; pooch downloads to a
temporary name and moves a file into place only once its hash matches, so a failed or corrupted
download leaves nothing in the cache.

A mirror (``TOOLKIT_DATA_MIRROR`` or ``fetch(mirror=)``) is a folder, or an ``http(s)://``
address, laid out like the source's copy: ``banepa/oam/OAM-<x>-<y>-19.tif`` (+ ``.aux.xml``),
``banepa/osm_features_ac7e343eb1faacd2.geojson``, ``banepa/stac-item.json``. Files from a
folder are checked against the same hashes before they are copied into the cache.

From the tiles, :func:`build` makes what the workflow uses, once per ground pixel size: a GeoTIFF
mosaic (0.5 m by default) in UTM zone 45N (EPSG:32645; rasterio merge, then a warp with average
resampling, nodata 0 kept) and the footprints as a GeoPackage in its CRS, clipped to it.

This sits at the bottom of the package beside :mod:`toolkit.datasets`, which imports it only
when this sample is asked for (so ``datasets`` itself runs on the standard library alone).

Layer: data.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from toolkit._fs import atomic_file, sha256

__all__ = ["BASE_URL", "CREDIT", "DESCRIPTION", "FILES", "MIRROR_ENV", "build", "fetch_files"]

# HOT's fAIr-models repository, pinned to one commit (the files never change under this address)
COMMIT = "95f0727e8fb05816c1544766e8039f5237c3867d"
BASE_URL = f"https://raw.githubusercontent.com/hotosm/fAIr-models/{COMMIT}/data/sample/"
MIRROR_ENV = "TOOLKIT_DATA_MIRROR"
MIRROR_FOLDER = "banepa"  # the sample's folder inside a mirror
REGISTRY = Path(__file__).parent / "registry" / "banepa.txt"
FOOTPRINTS = "osm_features_ac7e343eb1faacd2.geojson"
STAC_ITEM = "stac-item.json"

CRS = "EPSG:32645"  # UTM zone 45N, the local zone
RESOLUTION = 0.5  # metres, the default
MOSAIC = "banepa_0.5m_utm45n.tif"
FOOTPRINTS_GPKG = "banepa_footprints_utm45n.gpkg"
# the tiles' own ground pixel (about 0.13 m): a finer mosaic would only interpolate
FINEST, COARSEST = 0.15, 10.0
# what the built files are made by: a new recipe gets new file names, never a stale mosaic
RECIPE = "mosaic v1: merge, warp to EPSG:32645 at 0.5 m, average resampling, nodata 0"

CREDIT = ("Imagery: OpenAerialMap contributors (CC BY 4.0); footprints © OpenStreetMap "
          "contributors (ODbL); sample packaged by HOT's fAIr")
DESCRIPTION = (
    "Banepa, Nepal: a dense town centre (about 0.41 x 0.54 km) where most buildings touch. "
    "'image': RGB uint8 GeoTIFF mosaic at 0.5 m in UTM 45N (EPSG:32645), 826 x 1089 px, nodata 0, "
    "made from 48 drone-imagery web-map tiles (OpenAerialMap, CC BY 4.0); 'footprints': 1,466 "
    "building polygons from OpenStreetMap (ODbL) as a GeoPackage in the same CRS; 'tiles': the "
    "folder of the original tiles; 'metadata': the source's STAC item.")


def _registry() -> dict[str, str]:
    """``{file name in the mirror layout: "sha256:<hex>"}``."""
    entries = {}
    for line in REGISTRY.read_text().splitlines():
        if line.strip():
            name, digest = line.split()
            entries[name] = digest
    return entries


FILES = _registry()


def source_url(name: str) -> str:
    """The pinned public address of a file of the sample (the source lays its files out
    differently from a mirror)."""
    if name.startswith("oam/"):
        return BASE_URL + "train/" + name
    if name == FOOTPRINTS:
        return BASE_URL + "train/osm/" + name
    if name == STAC_ITEM:
        return BASE_URL + "buildings-banepa-segmentation/" + name
    raise KeyError(name)


def fetch_files(folder: Path, mirror: str | os.PathLike | None, error: type[Exception]) -> Path:
    """Every file of the registry under ``folder`` (the mirror's layout), verified; returns
    ``folder``. Files already there with the right hash are kept; the others come from
    ``mirror`` (a folder or an http(s) address), else from the pinned source. ``error`` is
    raised (the datasets module's ``SampleDataError``) with the address, the hash or the
    variable to set."""
    import pooch

    mirror_text = os.fspath(mirror) if mirror is not None else ""
    remote = mirror_text.startswith(("http://", "https://"))
    local = Path(mirror_text).expanduser() / MIRROR_FOLDER if mirror_text and not remote else None
    if local is not None and not local.is_dir():
        raise error(f"The data mirror {mirror_text} (from {MIRROR_ENV} or mirror=) has no "
                    f"'{MIRROR_FOLDER}' folder; expected {local}/oam/... and {local}/{FOOTPRINTS}.")
    base = mirror_text.rstrip("/") + f"/{MIRROR_FOLDER}/" if remote else BASE_URL
    urls = {} if remote else {name: source_url(name) for name in FILES}
    fetcher = pooch.create(path=folder, base_url=base, registry=dict(FILES), urls=urls,
                           retry_if_failed=2)
    missing = [name for name in FILES if not _verified(folder / name, FILES[name])]
    for name in missing:
        if local is not None:
            _copy_verified(local / name, folder / name, FILES[name], error)
            continue
        url = fetcher.get_url(name)
        try:
            fetcher.fetch(name)
        except ValueError as err:  # pooch: the hash of the download does not match
            raise error(f"{url}: the download does not match its pinned checksum "
                        f"({FILES[name]}); nothing was kept. {err}") from err
        except Exception as err:  # no network, HTTP errors: say what to do without one
            raise error(
                f"Could not download {url} ({type(err).__name__}: {err}). Without internet "
                f"access, set the environment variable {MIRROR_ENV} to a folder (or web address) "
                f"holding a copy laid out as '{MIRROR_FOLDER}/{name}'.") from err
    return folder


def _verified(path: Path, expected: str) -> bool:
    return path.is_file() and sha256(path) == expected.split(":", 1)[1]


def _copy_verified(source: Path, target: Path, expected: str, error: type[Exception]) -> None:
    """Copy a mirror's file into the cache through a temporary name, once its hash matches."""
    if not source.is_file():
        raise error(f"The data mirror lacks {source} (from {MIRROR_ENV} or mirror=).")
    digest = sha256(source)
    if digest != expected.split(":", 1)[1]:
        raise error(f"{source}: sha256 {digest} does not match the pinned {expected}; the mirror's "
                    "copy is damaged or a different file. Nothing was copied.")
    with atomic_file(target) as tmp:
        shutil.copyfile(source, tmp)


def check_resolution(resolution) -> float:
    """``resolution`` as a float, or ``ValueError`` unless it is a number of metres from
    ``FINEST`` to ``COARSEST``."""
    import numbers

    if (isinstance(resolution, bool) or not isinstance(resolution, numbers.Real)
            or not FINEST <= resolution <= COARSEST):
        raise ValueError(f"resolution is the mosaic's ground pixel size in metres, from {FINEST} (the "
                         f"tiles are about 0.13 m) to {COARSEST}; got {resolution!r}.")
    return float(resolution)


def build(raw: Path, out: Path, resolution: float = RESOLUTION) -> dict[str, Path]:
    """The mosaic (``resolution`` metres per pixel) and the footprints in ``out`` from the verified
    files in ``raw`` (built once per resolution: files already there are returned). Each is
    written to a temporary name and moved into place.

    Returns:
        ``{"image": mosaic GeoTIFF, "footprints": GeoPackage, "tiles": raw/oam, "metadata": STAC item}``.
    """
    resolution = check_resolution(resolution)
    default = resolution == RESOLUTION
    paths = {"image": out / (MOSAIC if default else f"banepa_{resolution:g}m_utm45n.tif"),
             "footprints": out / (FOOTPRINTS_GPKG if default else f"banepa_footprints_utm45n_{resolution:g}m.gpkg"),
             "tiles": raw / "oam", "metadata": raw / STAC_ITEM}
    if not paths["image"].is_file():
        _write_mosaic(sorted((raw / "oam").glob("*.tif")), paths["image"], resolution)
    if not paths["footprints"].is_file():
        _write_footprints(raw / FOOTPRINTS, paths["image"], paths["footprints"])
    return paths


def _write_mosaic(tiles: list[Path], path: Path, resolution: float) -> None:
    import numpy as np
    import rasterio
    from rasterio.merge import merge
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    sources = [rasterio.open(t) for t in tiles]
    try:
        for src, tile in zip(sources, tiles):
            if src.crs is None:  # the georeference is in the .aux.xml side file
                raise ValueError(f"{tile}: no CRS; its .tif.aux.xml side file must sit beside it.")
        # native resolution, EPSG:4326; 0 where no tile covers the union's grid
        data, transform = merge(sources, nodata=0)
        crs = sources[0].crs
    finally:
        for src in sources:
            src.close()
    bands, height, width = data.shape
    left, top = transform.c, transform.f
    right, bottom = left + width * transform.a, top + height * transform.e
    dst_transform, dst_width, dst_height = calculate_default_transform(
        crs, CRS, width, height, left=left, bottom=bottom, right=right, top=top, resolution=resolution)
    mosaic = np.zeros((bands, dst_height, dst_width), dtype=data.dtype)
    reproject(data, mosaic, src_transform=transform, src_crs=crs, src_nodata=0, dst_transform=dst_transform,
              dst_crs=CRS, dst_nodata=0, resampling=Resampling.average)
    profile = {"driver": "GTiff", "width": dst_width, "height": dst_height, "count": bands,
               "dtype": mosaic.dtype, "crs": CRS, "transform": dst_transform, "nodata": 0,
               "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate",
               "photometric": "RGB"}
    with atomic_file(path) as tmp:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(mosaic)
            dst.update_tags(SOURCE=BASE_URL, RECIPE=RECIPE.replace("0.5 m", f"{resolution:g} m"), CREDIT=CREDIT)


def _write_footprints(geojson: Path, mosaic: Path, path: Path) -> None:
    import geopandas as gpd
    import rasterio
    from shapely.geometry import box

    with rasterio.open(mosaic) as src:
        bounds, crs = src.bounds, src.crs
    footprints = gpd.read_file(geojson)[["osm_id", "osm_type", "geometry"]].to_crs(crs)
    # a few OSM rings touch themselves: buffer(0) repairs them without moving the outline
    invalid = ~footprints.geometry.is_valid
    footprints.loc[invalid, "geometry"] = footprints.geometry[invalid].buffer(0)
    footprints = gpd.clip(footprints, box(*bounds), keep_geom_type=True)
    footprints = footprints[~footprints.geometry.is_empty].reset_index(drop=True)
    with atomic_file(path) as tmp:
        footprints.to_file(tmp, driver="GPKG", layer="footprints")

