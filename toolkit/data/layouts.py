"""Chip folder layouts: find which one a folder holds and pair its chips by name.

Four paired layouts are read:

1. ``Export_Tiles``: ``images/`` + ``images2/`` (ArcGIS Pro export with an additional input raster;
   arcgis.learn's Pix2Pix data).
2. ``Classified_Tiles``: ``images/`` + ``labels/`` (image -> class mask, e.g. building footprints).
3. ``Images/train_a`` + ``Images/train_b``: the older hand-made arcgis.learn pix2pix layout.
4. Side by side: ``train/`` (and ``val/``, ``test/``) of images that hold A and B side by side, as
   in the pix2pix research sets ("maps", "facades").

Chips are paired by name: through ``map.txt`` when present (its order means nothing), else by
file name; never by sorted position.

Unpaired (CycleGAN) folders hold two domains indexed one by one, each with its own chips, band
count and statistics (:func:`index_unpaired`; the formats are described in
:mod:`toolkit.data.unpaired`): ``A/`` + ``B/`` (arcgis.learn's CycleGAN data, what
``export_training_data(metadata_format="CycleGAN")`` writes), ``trainA/`` + ``trainB/`` (the
reference CycleGAN code; ``testA/`` + ``testB/`` of same-named chips are true pairs for scoring),
``images/`` + ``images2/`` whose metadata says CycleGAN, and, when asked for,
``Images/train_a`` + ``Images/train_b``.

Holds the dataset-type and layout constants, the indexed folders (:class:`ChipFolder`,
:class:`UnpairedFolder`) and the indexing: layout detection, pairing by name, header checks.
The export metadata (.emd, stats JSON) it reads through :mod:`toolkit.data.metadata`, the chip
headers it checks through :mod:`toolkit.data.headers`.

Layer: data (the package's layers, bottom to top: formats and I/O, data, inference core,
training, front doors). Reads headers and metadata only, with no fastai, so inference and
:mod:`toolkit.vector` can use it.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from toolkit import esri
from toolkit.data.chips import CHIP_SUFFIXES, ChipHeader, is_chip, read_header
from toolkit.data.headers import DtypeSeen, alike_headers, chip_cell_size, require_alike, require_same_size
from toolkit.data.metadata import (METADATA_FILES, band_names, boundary_class, export_classes, load_json,
                                   metadata_mode, stats_list)

__all__ = ["CLASSIFIED_TILES", "CYCLEGAN", "DATASET_TYPES", "EXPECTED_TREES", "PIX2PIX", "UNPAIRED_DATASET_TYPES",
           "UNPAIRED_TREES", "ChipDomain", "ChipFolder", "ChipPair", "UnpairedFolder", "boundary_class",
           "dataset_type_name", "index_folder", "index_unpaired", "unpaired_layout"]

PIX2PIX = "Pix2Pix"
CLASSIFIED_TILES = "Classified_Tiles"
CYCLEGAN = "CycleGAN"
DATASET_TYPES = (PIX2PIX, CLASSIFIED_TILES)  # paired: one ChipFolder of (input, target) chips
UNPAIRED_DATASET_TYPES = (CYCLEGAN,)  # two domains: an UnpairedFolder
_ALIASES = {"Export_Tiles": PIX2PIX, "pix2pix": PIX2PIX, "Pix2Pix": PIX2PIX,
            "Classified_Tiles": CLASSIFIED_TILES, "CycleGAN": CYCLEGAN, "cyclegan": CYCLEGAN}

EXPECTED_TREES = """\
  Export_Tiles (pix2pix)        Classified_Tiles (masks)     hand-made pix2pix       side by side (A|B)
  <folder>/                     <folder>/                    <folder>/               <folder>/
    images/000000000.tif          images/000000000.tif         Images/train_a/x.png    train/1.jpg
    images2/000000000.tif         labels/000000000.tif         Images/train_b/x.png    val/1.jpg (optional)
    map.txt, *.emd, *.json        map.txt, *.emd, *.json"""

UNPAIRED_TREES = """\
  CycleGAN export (unpaired)    CycleGAN reference layout
  <folder>/                     <folder>/
    A/images/000000000.tif        trainA/a.tif (or .png, .jpg)
    A/map.txt, *.emd, *.json      trainB/b.tif (any count, own band count)
    B/images/000000000.tif        testA/x.tif + testB/x.tif (optional true pairs)
    B/map.txt, *.emd, *.json"""


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
    input_classes: bool = False  # label-to-image: the inputs are class rasters (of ``classes``)

    @property
    def input_paths(self) -> list[Path]:
        """The folders that hold the chips and the metadata files of the folder: what the toolkit
        reads, and so must never write into or over (a ``models/`` folder beside them is fine)."""
        folders = {p.parent for pair in [*self.pairs, *(self.valid_pairs or [])] for p in (pair.input, pair.target)}
        files = [self.path / n for n in METADATA_FILES]
        return sorted(folders) + [f for f in files if f.exists()]


@dataclass
class ChipDomain:
    """One domain of an unpaired folder: its chips (sorted by name), alike in bands and size."""

    name: str  # "A" or "B"
    folder: Path
    chips: list[Path]
    header: ChipHeader
    stats: list[dict] | None = None  # the .emd's AllTilesStats of this domain, when usable
    stats_key: str = "AllTilesStats"  # which .emd key ``stats`` came from
    emd: Path | None = None  # the .emd file that holds them
    band_names: list[str] | None = None
    cell_size: tuple[float, float] | None = None  # ground size of a pixel, when georeferenced


@dataclass
class UnpairedFolder:
    """An unpaired (CycleGAN) folder, indexed: two domains and, when the folder has them, true
    pairs for scoring (``testA/`` + ``testB/`` chips of the same names)."""

    path: Path
    layout: str
    a: ChipDomain
    b: ChipDomain
    test_pairs: list[ChipPair] | None = None  # input: the A chip, target: its B namesake
    metadata_files: list[Path] = field(default_factory=list)
    dataset_type: str = CYCLEGAN

    @property
    def input_paths(self) -> list[Path]:
        """The chip folders and metadata files read: never written into or over."""
        folders = {self.a.folder, self.b.folder}
        folders.update(p.parent for pair in self.test_pairs or [] for p in (pair.input, pair.target))
        return sorted(folders) + [f for f in self.metadata_files if f.exists()]


def dataset_type_name(name: str | None) -> str | None:
    """The toolkit's name of a dataset type (``"Export_Tiles"`` -> ``"Pix2Pix"``...); None stays
    None; ``ValueError`` listing the known ones."""
    if name is None:
        return None
    if name not in _ALIASES:
        raise ValueError(f"dataset_type must be one of {DATASET_TYPES + UNPAIRED_DATASET_TYPES} "
                         f"(or 'Export_Tiles'), got {name!r}.")
    return _ALIASES[name]


def index_folder(path: str | Path, *, dataset_type: str | None = None,
                 direction: str = "AtoB") -> ChipFolder:
    """Detect the layout of ``path``, pair its chips by name and check them, reading headers only.

    Raises ``FileNotFoundError``/``ValueError`` naming the folder or file: no known layout (the
    message shows the expected trees), chips without their pair, unreadable chips, chips of
    another size or band count than the rest of their set.
    """
    path = _existing_folder(path)
    wanted = dataset_type_name(dataset_type)
    if wanted in UNPAIRED_DATASET_TYPES:
        raise ValueError(f"{path}: dataset_type={wanted!r} reads two unpaired domains; index the "
                         "folder with index_unpaired() (prepare_data does).")
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
        if kind == PIX2PIX and not images2:  # arcgis.learn: Pix2Pix on images/ + labels/ is label-to-image
            kind, direction = CLASSIFIED_TILES, "BtoA"
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
        raise ValueError(f"{path}: matches no chip folder layout. Expected one of:\n{EXPECTED_TREES}\n"
                         f"{UNPAIRED_TREES}")

    if folder.dataset_type == CLASSIFIED_TILES and folder.layout not in (esri.CLASSIFIED_TILES,):
        raise ValueError(f"{path}: the {folder.layout} layout holds image pairs, not class labels; "
                         "use dataset_type='Pix2Pix'.")
    _check_headers(folder)
    folder.cell_size = chip_cell_size(folder.pairs[0].input)
    if folder.dataset_type == CLASSIFIED_TILES and direction == "BtoA":
        return labels_to_images(folder)
    return folder


def labels_to_images(folder: ChipFolder) -> ChipFolder:
    """A Classified_Tiles folder read the other way, class rasters -> images (pix2pixHD's
    label-to-image synthesis): each pair's label chip is the input, its image the target; the
    dataset type is then ``"Pix2Pix"`` (image targets), the classes the input's."""
    swap = lambda pairs: None if pairs is None else [ChipPair(p.name, p.target, p.input) for p in pairs]  # noqa: E731
    return dataclasses.replace(folder, dataset_type=PIX2PIX, pairs=swap(folder.pairs),
                               valid_pairs=swap(folder.valid_pairs), input_stats=None,
                               target_stats=folder.input_stats, input_header=folder.target_header,
                               target_header=folder.input_header, band_names=None, input_classes=True)


def _existing_folder(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such folder.")
    return path


def _subdir(path: Path, name: str) -> Path | None:
    """``path/name`` if it is a folder; the first component is matched case-insensitively."""
    first, *rest = name.split("/")
    candidates = [p for p in path.iterdir() if p.is_dir() and p.name.lower() == first.lower()]
    if not candidates:
        return None
    found = sorted(candidates, key=lambda p: p.name != first)[0]  # exact case first
    found = found.joinpath(*rest) if rest else found
    return found if found.is_dir() else None


def _esri_folder(path: Path, images: Path, target_dir: Path, kind: str) -> ChipFolder:
    """An Esri export (images/ + images2/ or labels/) indexed: its pairs, by map.txt when there is
    one, and what its metadata holds (classes, statistics, band names)."""
    stats = load_json(path / esri.STATS_FILE) or {}
    emd = load_json(path / esri.EMD_FILE) or {}
    map_file = path / esri.MAP_FILE
    pairs = _pair_by_map(path, map_file, images, target_dir) if map_file.is_file() else \
        _pair_by_name(images, target_dir)
    classes = export_classes(emd, stats) if kind == CLASSIFIED_TILES else []
    layout = esri.EXPORT_TILES if target_dir.name.lower() == esri.IMAGES2 else esri.CLASSIFIED_TILES
    return ChipFolder(path, layout, kind, pairs, classes=classes,
                      input_stats=stats_list(emd.get("AllTilesStats")),
                      target_stats=stats_list(emd.get("AllTilesStats2")) if kind == PIX2PIX else None,
                      band_names=band_names(stats))


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
    dtypes_in, dtypes_out = DtypeSeen("input chips"), DtypeSeen("target chips")
    for pair in pairs:
        header = read_header(pair.input)
        if pair.side_by_side:
            header = ChipHeader(header.bands, header.height, header.width // 2, header.dtype)
            target = header
        else:
            target = read_header(pair.target)
        dtypes_in.add(pair.input, header)
        dtypes_out.add(pair.target, target)
        if first_in is None:
            first_in, first_out, first_pair = header, target, pair
            require_same_size(pair.target, target, pair.input, header, "its input chip")
            continue
        require_alike(pair.input, header, first_pair.input, first_in)
        require_alike(pair.target, target, first_pair.target, first_out)
    dtypes_in.warn(folder.path)
    dtypes_out.warn(folder.path)
    folder.input_header, folder.target_header = first_in, first_out


# --- unpaired (CycleGAN) folders ---------------------------------------------------------------------


def unpaired_layout(path: str | Path, dataset_type: str | None = None) -> str | None:
    """Which unpaired layout ``path`` holds: ``"A+B"``, ``"trainA+trainB"``, ``"images+images2"``
    or ``"Images/train_a+train_b"``; ``None`` when it is a paired folder (or none at all) and
    ``dataset_type`` does not ask for CycleGAN.

    Without ``dataset_type`` only unambiguous layouts count: ``trainA/`` + ``trainB/``,
    ``A/images`` + ``B/images``, and ``images/`` + ``images2/`` whose metadata says
    ``MetaDataMode: "CycleGAN"`` (otherwise that is a Pix2Pix export). ``ValueError`` for half an
    unpaired layout (``trainA/`` without ``trainB/``...) or ``dataset_type="CycleGAN"`` on a
    folder that holds no two image domains.
    """
    path = _existing_folder(path)
    wanted = dataset_type_name(dataset_type)
    if wanted not in (None, *UNPAIRED_DATASET_TYPES):
        return None
    for first, second, layout in (("trainA", "trainB", "trainA+trainB"), ("A/images", "B/images", "A+B")):
        found = [_subdir(path, first), _subdir(path, second)]
        if all(found):
            return layout
        if any(found):
            have, missing = (first, second) if found[0] else (second, first)
            raise ValueError(f"{path}: holds {have}/ but no {missing}/; an unpaired (CycleGAN) folder "
                             f"holds both domains. Expected one of:\n{UNPAIRED_TREES}")
    images, images2 = _subdir(path, esri.IMAGES), _subdir(path, esri.IMAGES2)
    if images and images2 and (wanted is not None or metadata_mode(path) == CYCLEGAN):
        return "images+images2"
    if wanted is None:
        return None
    if _subdir(path, "Images/train_a") and _subdir(path, "Images/train_b"):
        return "Images/train_a+train_b"
    if images and _subdir(path, esri.LABELS):
        raise ValueError(f"{path}: holds images/ + labels/, a Classified_Tiles export (image -> class "
                         "mask); dataset_type='CycleGAN' translates between two image domains. "
                         f"Expected one of:\n{UNPAIRED_TREES}")
    raise ValueError(f"{path}: dataset_type='CycleGAN' needs two image domains. Expected one "
                     f"of:\n{UNPAIRED_TREES}")


def index_unpaired(path: str | Path, *, dataset_type: str | None = None) -> UnpairedFolder:
    """Index an unpaired (CycleGAN) folder: each domain's chips (all alike in bands and size),
    the statistics its metadata holds, and true test pairs when there are any; headers only.

    ``ValueError`` naming the folder or chip when ``path`` holds no unpaired layout (the message
    shows the expected trees), a domain holds no chips, or a chip differs from its domain's others.
    """
    path = _existing_folder(path)
    layout = unpaired_layout(path, dataset_type or CYCLEGAN)
    if layout == "A+B":
        roots = [_subdir(path, name) for name in ("A", "B")]
        a, b = (_esri_domain(name, _subdir(root, esri.IMAGES), root, "AllTilesStats")
                for name, root in zip(("A", "B"), roots))
        metadata = [root / name for root in roots for name in METADATA_FILES]
        return UnpairedFolder(path, layout, a, b, metadata_files=metadata)
    if layout == "images+images2":
        a = _esri_domain("A", _subdir(path, esri.IMAGES), path, "AllTilesStats")
        b = _esri_domain("B", _subdir(path, esri.IMAGES2), path, "AllTilesStats2")
        b.band_names = None  # InputRastersProps names the input raster's bands only
        return UnpairedFolder(path, layout, a, b, metadata_files=[path / n for n in METADATA_FILES])
    first, second = ("trainA", "trainB") if layout == "trainA+trainB" else ("Images/train_a", "Images/train_b")
    a, b = (_domain(name, _subdir(path, sub)) for name, sub in (("A", first), ("B", second)))
    test_pairs = _test_pairs(path, a, b) if layout == "trainA+trainB" else None
    return UnpairedFolder(path, layout, a, b, test_pairs=test_pairs)


def _domain(name: str, folder: Path) -> ChipDomain:
    chips = list(_chips(folder).values())
    if not chips:
        raise ValueError(f"{folder}: domain {name} holds no chips ({', '.join(sorted(CHIP_SUFFIXES))} files).")
    return ChipDomain(name, folder, chips, alike_headers(chips), cell_size=chip_cell_size(chips[0]))


def _esri_domain(name: str, folder: Path, metadata: Path, stats_key: str) -> ChipDomain:
    """A domain of an Esri export: its chips, and the statistics and band names its metadata in
    ``metadata`` (a folder) holds under ``stats_key``."""
    domain = _domain(name, folder)
    emd = load_json(metadata / esri.EMD_FILE) or {}
    stats = load_json(metadata / esri.STATS_FILE) or {}
    domain.stats, domain.stats_key = stats_list(emd.get(stats_key)), stats_key
    domain.emd = metadata / esri.EMD_FILE if emd else None
    names = band_names(stats)
    domain.band_names = names if names is not None and len(names) == domain.header.bands else None
    return domain


def _test_pairs(path: Path, a: ChipDomain, b: ChipDomain) -> list[ChipPair] | None:
    """True pairs of the reference layout: ``testA/`` and ``testB/`` chips of the same names, with
    their domain's band counts. None (with a warning when some exist) if they do not all pair."""
    test_a, test_b = _subdir(path, "testA"), _subdir(path, "testB")
    chips_a = _chips(test_a) if test_a else {}
    chips_b = _chips(test_b) if test_b else {}
    if not chips_a and not chips_b:
        return None
    unpaired = sorted(chips_a.keys() ^ chips_b.keys())
    if unpaired:
        warnings.warn(f"{path}: {len(unpaired)} test chip(s) of testA/ and testB/ have no namesake in "
                      f"the other folder ({_names(unpaired)}); true pairs need every chip paired by "
                      "name, so the folder gives no test pairs.", stacklevel=3)
        return None
    pairs = [ChipPair(n, chips_a[n], chips_b[n]) for n in sorted(chips_a)]
    for domain, chips in ((a, [p.input for p in pairs]), (b, [p.target for p in pairs])):
        header = alike_headers(chips)
        if header.bands != domain.header.bands:
            raise ValueError(f"{chips[0]}: {header.bands} band(s), but the training chips of domain "
                             f"{domain.name} ({domain.chips[0]}) have {domain.header.bands}.")
    require_same_size(pairs[0].target, read_header(pairs[0].target), pairs[0].input,
                      read_header(pairs[0].input), "its test pair")
    return pairs


def _names(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
