"""Chip folder layouts: find which one a folder holds and pair its chips by name.

Four layouts are read:

1. ``Export_Tiles``: ``images/`` + ``images2/`` (ArcGIS Pro export with an additional input raster;
   arcgis.learn's Pix2Pix data).
2. ``Classified_Tiles``: ``images/`` + ``labels/`` (image -> class mask, e.g. building footprints).
3. ``Images/train_a`` + ``Images/train_b``: the older hand-made arcgis.learn pix2pix layout.
4. Side by side: ``train/`` (and ``val/``, ``test/``) of images that hold A and B side by side, as
   in the pix2pix research sets ("maps", "facades").

Chips are paired by name: through ``map.txt`` when present (its order means nothing), else by
file name; never by sorted position.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import rasterio

from toolkit import esri
from toolkit.data.chips import CHIP_SUFFIXES, ChipHeader, is_chip, read_header

PIX2PIX = "Pix2Pix"
CLASSIFIED_TILES = "Classified_Tiles"
DATASET_TYPES = (PIX2PIX, CLASSIFIED_TILES)
_ALIASES = {"Export_Tiles": PIX2PIX, "pix2pix": PIX2PIX, "Pix2Pix": PIX2PIX,
            "Classified_Tiles": CLASSIFIED_TILES}

EXPECTED_TREES = """\
  Export_Tiles (pix2pix)        Classified_Tiles (masks)     hand-made pix2pix       side by side (A|B)
  <folder>/                     <folder>/                    <folder>/               <folder>/
    images/000000000.tif          images/000000000.tif         Images/train_a/x.png    train/1.jpg
    images2/000000000.tif         labels/000000000.tif         Images/train_b/x.png    val/1.jpg (optional)
    map.txt, *.emd, *.json        map.txt, *.emd, *.json"""


@dataclass(frozen=True)
class ChipPair:
    """One training example: the input chip and its target (mask or image) chip.

    For side-by-side files ``input`` and ``target`` are the same file; ``side_by_side`` says which
    half is the input (``"AtoB"``: the left half).
    """

    name: str
    input: Path
    target: Path
    side_by_side: str | None = None


@dataclass
class ChipFolder:
    """A chip folder, indexed: its layout, pairs, classes and any statistics ArcGIS stored."""

    path: Path
    layout: str
    dataset_type: str
    pairs: list[ChipPair]
    valid_pairs: list[ChipPair] | None = None  # a fixed validation set (side by side: val/)
    classes: list[dict] = field(default_factory=list)  # [{"Value", "Name", "Color"}]
    input_stats: list[dict] | None = None  # .emd AllTilesStats
    target_stats: list[dict] | None = None  # .emd AllTilesStats2
    input_header: ChipHeader | None = None
    target_header: ChipHeader | None = None
    band_names: list[str] | None = None
    cell_size: tuple[float, float] | None = None  # ground size of an input pixel, when georeferenced

    @property
    def input_paths(self) -> list[Path]:
        """The folders that hold the chips and the metadata files of the folder: what the toolkit
        reads, and so must never write into or over (a ``models/`` folder beside them is fine)."""
        folders = {p.parent for pair in [*self.pairs, *(self.valid_pairs or [])] for p in (pair.input, pair.target)}
        files = [self.path / n for n in (esri.EMD_FILE, esri.MAP_FILE, esri.STATS_FILE, esri.STATS_TEXT_FILE)]
        return sorted(folders) + [f for f in files if f.exists()]


def _contour_keys(record: dict) -> dict:
    """The toolkit's mark of the footprint-outline class (``export_training_data(contour_width=)``)."""
    return {k: record[k] for k in ("Boundary", "ContourWidth") if k in record}


def boundary_class(classes: list[dict]) -> dict | None:
    """The class that holds footprint outlines: the one marked ``"Boundary": true`` by the export,
    else one named ``"boundary"``; ``None`` when there is none."""
    marked = [c for c in classes if c.get("Boundary")] or \
        [c for c in classes if str(c.get("Name", "")).lower() == "boundary"]
    return marked[0] if marked else None


def dataset_type_name(name: str | None) -> str | None:
    if name is None:
        return None
    if name not in _ALIASES:
        raise ValueError(f"dataset_type must be one of {DATASET_TYPES} (or 'Export_Tiles'), got {name!r}.")
    return _ALIASES[name]


def index_folder(path: str | Path, *, dataset_type: str | None = None,
                 direction: str = "AtoB") -> ChipFolder:
    """Detect the layout of ``path``, pair its chips by name and check them, reading headers only.

    Raises ``FileNotFoundError``/``ValueError`` naming the folder or file: no known layout (the
    message shows the expected trees), chips without their pair, unreadable chips, chips of
    another size or band count than the rest of their set.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such folder.")
    wanted = dataset_type_name(dataset_type)
    if direction not in ("AtoB", "BtoA"):
        raise ValueError(f"direction must be 'AtoB' or 'BtoA', got {direction!r}.")

    images, images2, labels = (_subdir(path, n) for n in (esri.IMAGES, esri.IMAGES2, esri.LABELS))
    hand_a, hand_b = _subdir(path, "Images/train_a"), _subdir(path, "Images/train_b")
    if images and (images2 or labels):
        if images2 and labels and wanted is None:
            raise ValueError(f"{path}: holds both images2/ and labels/ (a change-detection export); "
                             "pass dataset_type='Pix2Pix' to pair images/ with images2/, or "
                             "'Classified_Tiles' to pair images/ with labels/.")
        kind = wanted or (PIX2PIX if images2 else CLASSIFIED_TILES)
        target_dir = images2 if kind == PIX2PIX else labels
        if target_dir is None:
            raise ValueError(f"{path}: dataset_type={kind!r} needs a "
                             f"{'images2' if kind == PIX2PIX else 'labels'}/ folder beside images/.")
        folder = _esri_folder(path, images, target_dir, kind)
    elif hand_a and hand_b:
        pairs = _pair_by_name(hand_a, hand_b)
        folder = ChipFolder(path, "Images/train_a+train_b", wanted or PIX2PIX, pairs)
    elif _subdir(path, "train") and any(is_chip(p) for p in _subdir(path, "train").iterdir()):
        folder = _side_by_side_folder(path, direction, wanted)
    else:
        raise ValueError(f"{path}: matches no chip folder layout. Expected one of:\n{EXPECTED_TREES}")

    if folder.dataset_type == CLASSIFIED_TILES and folder.layout not in (esri.CLASSIFIED_TILES,):
        raise ValueError(f"{path}: the {folder.layout} layout holds image pairs, not class labels; "
                         "use dataset_type='Pix2Pix'.")
    _check_headers(folder)
    folder.cell_size = _cell_size(folder.pairs[0].input)
    return folder


def _cell_size(chip: Path) -> tuple[float, float] | None:
    """Pixel size of a georeferenced chip in its CRS units; None for plain pictures."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(chip) as src:
            if src.crs is None:
                return None
            return abs(src.transform.a), abs(src.transform.e)


def _subdir(path: Path, name: str) -> Path | None:
    """``path/name`` if it is a folder; the first component is matched case-insensitively."""
    first, *rest = name.split("/")
    candidates = [p for p in path.iterdir() if p.is_dir() and p.name.lower() == first.lower()]
    if not candidates:
        return None
    found = sorted(candidates, key=lambda p: p.name != first)[0]  # exact case first
    found = found.joinpath(*rest) if rest else found
    return found if found.is_dir() else None


def _load_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err}).") from err


def _esri_folder(path: Path, images: Path, target_dir: Path, kind: str) -> ChipFolder:
    stats = _load_json(path / esri.STATS_FILE) or {}
    emd = _load_json(path / esri.EMD_FILE) or {}
    map_file = path / esri.MAP_FILE
    pairs = _pair_by_map(path, map_file, images, target_dir) if map_file.is_file() else \
        _pair_by_name(images, target_dir)
    classes = []
    if kind == CLASSIFIED_TILES:
        if isinstance(emd.get("Classes"), list) and emd["Classes"]:
            classes = [{"Value": int(c["Value"]), "Name": str(c.get("Name", c["Value"])),
                        "Color": c.get("Color")} | _contour_keys(c) for c in emd["Classes"]]
        elif isinstance(stats.get("Classes"), list) and stats["Classes"]:
            classes = [{"Value": int(c["ClassValue"]), "Name": str(c.get("ClassName", c["ClassValue"])),
                        "Color": c.get("Color")} for c in stats["Classes"]]
    layout = esri.EXPORT_TILES if target_dir.name.lower() == esri.IMAGES2 else esri.CLASSIFIED_TILES
    band_names = (stats.get("InputRastersProps") or {}).get("BandNames")
    return ChipFolder(path, layout, kind, pairs, classes=classes,
                      input_stats=_stats_list(emd.get("AllTilesStats")),
                      target_stats=_stats_list(emd.get("AllTilesStats2")) if kind == PIX2PIX else None,
                      band_names=band_names if isinstance(band_names, list) else None)


def _stats_list(value) -> list[dict] | None:
    """AllTilesStats entries usable for normalisation (every band has numbers), else None."""
    keys = ("Min", "Max", "Mean", "StdDev")
    if not isinstance(value, list) or not value:
        return None
    if not all(isinstance(b, dict) and all(isinstance(b.get(k), (int, float)) for k in keys) for b in value):
        return None
    return value


def _chips(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if is_chip(p)}


def _pair_by_name(inputs: Path, targets: Path) -> list[ChipPair]:
    a, b = _chips(inputs), _chips(targets)
    only_a, only_b = sorted(a.keys() - b.keys()), sorted(b.keys() - a.keys())
    if only_a or only_b:
        raise ValueError(
            "Chips without their pair: "
            + "; ".join(f"{len(names)} in {folder} have no namesake in {other}: {_names(names)}"
                        for names, folder, other in ((only_a, inputs, targets), (only_b, targets, inputs))
                        if names))
    if not a:
        raise ValueError(f"{inputs}: holds no chips ({', '.join(sorted(CHIP_SUFFIXES))} files).")
    return [ChipPair(name, a[name], b[name]) for name in sorted(a)]


def _pair_by_map(path: Path, map_file: Path, images: Path, target_dir: Path) -> list[ChipPair]:
    """Pairs from map.txt: each row names an images/ chip and its images2/ or labels/ chip."""
    pairs: dict[str, ChipPair] = {}
    missing: list[str] = []
    for row in esri.read_map(map_file):
        inputs = [p for p in row if p.split("/")[0].lower() == images.name.lower()]
        targets = [p for p in row if p.split("/")[0].lower() == target_dir.name.lower()]
        if len(inputs) != 1 or len(targets) != 1:
            continue  # a row of another layout (e.g. images2 column when pairing labels)
        chip_in, chip_out = images / Path(inputs[0]).name, target_dir / Path(targets[0]).name
        for chip in (chip_in, chip_out):
            if not chip.is_file():
                missing.append(str(chip.relative_to(path)))
        pairs[chip_in.stem] = ChipPair(chip_in.stem, chip_in, chip_out)
    if missing:
        raise ValueError(f"{map_file} lists {len(missing)} chips that do not exist: {_names(missing)}.")
    if not pairs:
        raise ValueError(f"{map_file}: no line pairs {images.name}/ with {target_dir.name}/ chips.")
    unlisted = sorted(set(_chips(images)) - pairs.keys())
    if unlisted:
        warnings.warn(f"{images}: {len(unlisted)} chips are not listed in {map_file} and are left "
                      f"out: {_names(unlisted)}", stacklevel=3)
    return [pairs[name] for name in sorted(pairs)]


def _side_by_side_folder(path: Path, direction: str, wanted: str | None) -> ChipFolder:
    def pairs_in(folder: Path | None) -> list[ChipPair]:
        if folder is None:
            return []
        return [ChipPair(p.stem, p, p, side_by_side=direction) for p in _chips(folder).values()]

    train = pairs_in(_subdir(path, "train"))
    valid = pairs_in(_subdir(path, "val")) or None
    return ChipFolder(path, "side_by_side", wanted or PIX2PIX, train, valid_pairs=valid)


def _check_headers(folder: ChipFolder) -> None:
    """Every input chip alike and every target chip alike (bands, size), inputs and targets of
    the same size; reading headers only."""
    pairs = folder.pairs + (folder.valid_pairs or [])
    first_in = first_out = None
    for pair in pairs:
        header = read_header(pair.input)
        if pair.side_by_side:
            header = ChipHeader(header.bands, header.height, header.width // 2, header.dtype)
            target = header
        else:
            target = read_header(pair.target)
        if first_in is None:
            first_in, first_out, first_pair = header, target, pair
            if (header.height, header.width) != (target.height, target.width):
                raise ValueError(f"{pair.target}: {target.width}x{target.height} px, but its input "
                                 f"chip {pair.input} is {header.width}x{header.height} px.")
            continue
        for chip, got, expected, ref in ((pair.input, header, first_in, first_pair.input),
                                         (pair.target, target, first_out, first_pair.target)):
            if (got.bands, got.height, got.width) != (expected.bands, expected.height, expected.width):
                raise ValueError(
                    f"{chip}: {got.bands} band(s) of {got.width}x{got.height} px, but {ref} and the "
                    f"chips before it have {expected.bands} band(s) of {expected.width}x"
                    f"{expected.height} px; all chips of a set must match.")
    folder.input_header, folder.target_header = first_in, first_out


def _names(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
