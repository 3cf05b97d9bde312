"""Saved model folders in arcgis.learn's shape: ``<name>.pth``, ``<name>.emd``, figures, ``.dlpk``.

    <models>/<name>/
      <name>.pth                    state dicts only (torch.load(weights_only=True) reads them)
      <name>.emd                    JSON: arcgis.learn's keys + the toolkit's own
      ModelCharacteristics/loss_graph.png, ModelCharacteristics/show_results.png
      ArcGISImageTranslation.py     the Python raster function ArcGIS Pro runs (the .emd's
                                    InferenceFunction; see toolkit.arcgis_pro)
      <name>.dlpk                   a zip of the above

Layer: inference core.
"""

from __future__ import annotations

import io
import json
import lzma
import os
import shutil
import stat
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path

import torch

from toolkit import __version__
from toolkit._args import size_tuple
from toolkit._fs import atomic_folder
from toolkit.arcgis_pro import INFERENCE_FUNCTION
from toolkit.data.normalization import BandNorm, MaskEncoding
from toolkit.models.arcgis_learn import is_arcgis_emd, toolkit_emd, toolkit_weights
from toolkit.models.emd_schema import validate_emd

__all__ = ["MAX_EMD_BYTES", "MAX_WEIGHTS_BYTES", "arcgis_stats", "check_file_name", "model_emd", "read_model_folder",
           "read_package_member", "write_model_folder"]


MODEL_KIND = "model"  # the manifest kind of saved model folders (see toolkit._fs)


def write_model_folder(dest: Path, name: str, *, weights: dict, emd: dict, figures: dict,
                       extra_files: Mapping[str, str | os.PathLike | bytes] | None = None,
                       overwrite: bool = False) -> Path:
    """Write the folder ``dest`` and return the .emd path. An existing ``dest`` is replaced, once
    the new folder is complete, only with ``overwrite`` and only when it holds a model the
    toolkit saved (and nothing else); see :func:`toolkit._fs.check_output_folder`.

    ``figures`` maps file names under ``ModelCharacteristics/`` to matplotlib figures.
    ``extra_files`` maps plain file names beside the ``.emd`` (e.g. the ``InferenceFunction``'s
    raster function) to the file to copy there or its bytes; they go into the ``.dlpk`` too.
    ``ValueError`` for a name that is not a plain file name or is one of the model's own files.
    """
    extra = dict(extra_files or {})
    own = {f"{name}.pth", f"{name}.emd", f"{name}.dlpk", "ModelCharacteristics"}
    for file_name in extra:
        if not _plain_name(file_name) or file_name in own:
            raise ValueError(f"extra_files: {file_name!r} is not a plain file name beside the .emd "
                             "(no folders or '..'), or is one of the model's own files.")
    with atomic_folder(dest, overwrite=overwrite, kind=MODEL_KIND, role="save path") as staging:
        torch.save(weights, staging / f"{name}.pth")
        (staging / f"{name}.emd").write_text(json.dumps(emd, indent=2) + "\n")
        for file_name, content in extra.items():
            target = staging / file_name
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                shutil.copyfile(content, target)
        characteristics = staging / "ModelCharacteristics"
        characteristics.mkdir()
        for file_name, fig in figures.items():
            fig.savefig(characteristics / file_name, dpi=80, bbox_inches="tight")
        files = sorted(p for p in staging.rglob("*") if p.is_file())
        with zipfile.ZipFile(staging / f"{name}.dlpk", "w", zipfile.ZIP_DEFLATED) as archive:
            for path in files:
                archive.write(path, path.relative_to(staging).as_posix())
    return dest / f"{name}.emd"


# --- reading ------------------------------------------------------------------------------------
#
# A model may come from anyone (a downloaded .dlpk, a shared folder), so reading takes only what
# it needs and trusts no size or name in it: a package is never unpacked; each member is looked
# up by name, its declared size checked against a cap and its bytes counted as they stream.

MAX_EMD_BYTES = 16 * 2**20
"""Cap on an .emd's size: 16 MiB. A saved .emd is a few kB (its history adds ~200 B an epoch)."""
MAX_WEIGHTS_BYTES = 4 * 2**30
"""Cap on a weights file's size, and on the tensor data inside it: 4 GiB. The paper-sized
generator and discriminator take ~230 MB, ~700 MB with the optimizers' state."""
_CHUNK = 2**20
# what a damaged or unsupported member raises while being read, depending on codec and damage
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, OSError, RuntimeError,
               NotImplementedError)


def read_model_folder(path: str | os.PathLike) -> tuple[dict, dict, Path]:
    """Read a saved model: ``(emd, weights, emd_path)`` from its ``.emd``, its folder, its ``.dlpk``
    or its ``.pth`` (with the ``.emd`` of the same name beside it). Models saved by arcgis.learn
    come back in the toolkit's form (:mod:`toolkit.models.arcgis_learn`).

    Reads the ``.emd`` (checked with :func:`toolkit.models.emd_schema.validate_emd`) and the one
    weights file its ``ModelFile`` names (a plain file name beside it: no folders, ``..`` or
    symbolic links), each within its cap (:data:`MAX_EMD_BYTES`, :data:`MAX_WEIGHTS_BYTES`).
    Of a ``.dlpk`` only those two members are read, the ``.emd`` at the package's root, and
    ``emd_path`` is the package. ``weights`` is the dict of tensors ``torch.load(...,
    weights_only=True)`` gives, on the CPU.

    Raises ``FileNotFoundError`` / ``ValueError`` naming the file (and member) that is missing,
    too large or unreadable, and for a bad ``.emd`` the key.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such model (.emd, model folder or .dlpk).")
    if path.suffix.lower() == ".dlpk":
        return _read_package(path)
    if path.suffix.lower() == ".pth":  # arcgis.learn's pretrained_path: the weights, .emd beside
        emd_path = path.with_suffix(".emd")
        if not emd_path.is_file():
            raise FileNotFoundError(f"{path}: weights alone; their model definition {emd_path.name} "
                                    "must sit beside them (pass the .emd, the folder or the .dlpk).")
        path = emd_path
    if path.is_dir():
        emds = sorted(path.glob("*.emd"))
        if not emds:
            raise FileNotFoundError(f"{path}: the folder holds no .emd file.")
        if len(emds) > 1:
            raise ValueError(f"{path}: the folder holds {len(emds)} .emd files "
                             f"({', '.join(p.name for p in emds[:5])}); pass the one to load.")
        path = emds[0]
    with _open_capped(path, MAX_EMD_BYTES) as f:
        emd = _parse_emd(_read_capped(f, MAX_EMD_BYTES, str(path)), path)
    weights_path = _folder_file(path, emd.get("ModelFile", f"{path.stem}.pth"))
    with _open_capped(weights_path, MAX_WEIGHTS_BYTES) as f:
        weights = _torch_load(f, weights_path)
    return emd, _imported_weights(emd, weights, weights_path), path


def _read_package(package: Path) -> tuple[dict, dict, Path]:
    try:
        with zipfile.ZipFile(package) as archive:
            emd_name = _package_emd(archive, package)
            source = f"{package}: member {emd_name!r}"
            emd = _parse_emd(read_package_member(archive, package, emd_name, cap=MAX_EMD_BYTES), source)
            name = check_file_name(emd.get("ModelFile", f"{Path(emd_name).stem}.pth"), source)
            data = read_package_member(archive, package, name, cap=MAX_WEIGHTS_BYTES)
    except zipfile.BadZipFile as err:  # from ZipFile(): not a zip at all
        raise ValueError(f"{package}: not a readable .dlpk package ({err}).") from err
    source = f"{package}: member {name!r}"
    return emd, _imported_weights(emd, _torch_load(io.BytesIO(data), source), source), package


def _imported_weights(emd: dict, weights: dict, source) -> dict:
    """The weights in the toolkit's form: those of a model arcgis.learn saved are converted."""
    toolkit = emd["Toolkit"]
    if str(toolkit.get("imported_from", "")).startswith("arcgis.learn") or toolkit.get("weights_format") == "arcgis.learn":
        return toolkit_weights(emd, weights, source)
    return weights


def _package_emd(archive: zipfile.ZipFile, package: Path) -> str:
    """The name of the package's one ``.emd``, at its root (where arcgis.learn and ``save`` put it)."""
    emds = [i.filename for i in archive.infolist() if i.filename.lower().endswith(".emd") and not i.is_dir()]
    at_root = [n for n in emds if _plain_name(n)]
    if len(at_root) > 1:
        raise ValueError(f"{package}: the package holds {len(at_root)} .emd files at its root "
                         f"({', '.join(at_root[:5])}); expected one.")
    if not at_root:
        found = f" (found {', '.join(emds[:5])}; it must be at the package's root)" if emds else ""
        raise ValueError(f"{package}: the package holds no .emd file{found}.")
    return at_root[0]


def _plain_name(name) -> bool:
    return isinstance(name, str) and name not in ("", ".", "..") and \
        not any(c in name for c in "/\\:\0")


def check_file_name(name, source) -> str:
    """``name`` (an .emd's ``ModelFile``) if it is a plain file name, one in the package or folder
    itself: not absolute, no ``/`` or ``\\`` (nor a Windows drive's ``:``), not ``..``; else
    ``ValueError`` naming ``source`` (the .emd) and the name."""
    if not _plain_name(name):
        raise ValueError(f"{source}: ModelFile {name!r} is not a plain file name; the weights must be "
                         "a file beside the .emd (no folders, '..' or absolute paths).")
    return name


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n} bytes"


def read_package_member(archive: zipfile.ZipFile, package, name: str, *, cap: int) -> bytes:
    """The bytes of the member ``name`` at the root of the open ``archive`` (the file
    ``package``), read alone: nothing else is extracted.

    ``ValueError`` naming the package and the member when the name is not a plain file name,
    the member is missing, a folder or a symbolic link, declares more than ``cap`` bytes or
    yields more (reading stops there: a header that understates the size gains nothing), or
    is corrupt.
    """
    where = f"{package}: member {name!r}"
    if not _plain_name(name):
        raise ValueError(f"{where}: not a plain file name at the package's root.")
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise ValueError(f"{package}: the package holds no member {name!r}.") from None
    if info.is_dir() or stat.S_ISLNK(info.external_attr >> 16):  # Unix mode in the high 16 bits
        raise ValueError(f"{where} is a {'folder' if info.is_dir() else 'symbolic link'}; expected a file.")
    if info.file_size > cap:
        raise ValueError(f"{where} declares {_size(info.file_size)}, more than the cap of {_size(cap)}.")
    try:
        with archive.open(info) as stream:
            return _read_capped(stream, cap, where)
    except _ZIP_ERRORS as err:
        raise ValueError(f"{where}: corrupt or unreadable ({err}).") from err


def _read_capped(stream, cap: int, where: str) -> bytes:
    """All of ``stream``, in chunks; ``ValueError`` naming ``where`` once more than ``cap`` bytes
    have come (at most ``cap + 1`` are read)."""
    buf = io.BytesIO()
    while chunk := stream.read(min(_CHUNK, cap + 1 - buf.tell())):
        buf.write(chunk)
        if buf.tell() > cap:
            raise ValueError(f"{where}: holds more than the cap of {_size(cap)}; stopped reading there.")
    return buf.getvalue()


def _folder_file(emd_path: Path, name) -> Path:
    """The weights file ``name`` beside ``emd_path``: a plain name, not a symbolic link."""
    path = emd_path.parent / check_file_name(name, emd_path)
    if path.is_symlink():  # it could lead anywhere
        raise ValueError(f"{emd_path}: ModelFile {name!r} is a symbolic link; the weights must be a "
                         "plain file beside the .emd.")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the model's weights file is missing.")
    return path


def _open_capped(path: Path, cap: int):
    """``path`` opened for reading, if it is a regular file of at most ``cap`` bytes."""
    f = open(path, "rb")
    try:
        st = os.fstat(f.fileno())  # of what was opened, not of what the name pointed to before
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{path}: not a regular file.")
        if st.st_size > cap:
            raise ValueError(f"{path}: {_size(st.st_size)}, more than the cap of {_size(cap)}.")
    except BaseException:
        f.close()
        raise
    return f


def _parse_emd(data: bytes, source) -> dict:
    try:
        emd = json.loads(data)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        raise ValueError(f"{source}: not a valid .emd (JSON) file ({err}).") from err
    if is_arcgis_emd(emd):  # saved by arcgis.learn: read as the same model in the toolkit's form
        emd = toolkit_emd(emd, source)
    validate_emd(emd, source)
    return emd


def _torch_load(file, source) -> dict:
    """The weights dict in ``file`` (a torch.save zip, seekable) for ``source`` (for messages)."""
    _check_torch_zip(file, source)
    try:
        weights = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{source}: corrupt or unreadable weights file ({err}).") from err
    if not isinstance(weights, dict):  # which networks it must hold is the model class's check
        raise ValueError(f"{source}: holds no network weights (not a dict of state dicts).")
    return weights


def _check_torch_zip(file, source) -> None:
    """A weights file is itself a zip, and torch.load inflates compressed records: a small file
    could unpack to terabytes. torch.save writes them stored (uncompressed), so require that,
    with declared sizes that the file's own length covers and a total within the cap."""
    start = file.tell()
    length = file.seek(0, io.SEEK_END)
    file.seek(start)
    try:
        with zipfile.ZipFile(file) as archive:
            records = archive.infolist()
    except zipfile.BadZipFile as err:
        raise ValueError(f"{source}: corrupt or unreadable weights file (not the zip file torch.save "
                         f"writes: {err}).") from err
    finally:
        file.seek(start)
    total = 0
    for r in records:
        if r.compress_type != zipfile.ZIP_STORED or r.file_size != r.compress_size:
            raise ValueError(f"{source}: corrupt or unreadable weights file (record {r.filename!r} is "
                             "compressed; torch.save stores records uncompressed).")
        total += r.file_size
    if total > min(length, MAX_WEIGHTS_BYTES):
        raise ValueError(f"{source}: corrupt or unreadable weights file (its records declare "
                         f"{_size(total)} in a file of {_size(length)}).")


def model_emd(name: str, *, model_type: str, model_name: str, config: dict, input_norm: BandNorm, target_norm,
              model_keys: dict, history: list, metrics: dict, footprint_settings: dict | None,
              run: dict | None = None) -> dict:
    """The ``.emd`` of a model saved as ``<name>.pth``: the keys ArcGIS Pro reads, the model's
    arcgis.learn keys (``model_keys``), then the toolkit's own (``Toolkit``: ``run`` holds the
    data and fit settings of :mod:`toolkit.config` that trained it, for a repeat); see
    :meth:`toolkit.models.base.TranslationModel._emd` for why each is as it is."""
    is_mask = isinstance(target_norm, MaskEncoding)
    c = config
    width, height = size_tuple(c["chip_size"])
    emd = {
        "Framework": "PyTorch",
        "ModelType": model_type,
        "ModelName": model_name,
        "InferenceFunction": INFERENCE_FUNCTION,
        "ModelFile": f"{name}.pth",
        "ImageHeight": height,
        "ImageWidth": width,
        "ExtractBands": c.get("extract_bands") or list(range(input_norm.raster_bands)),
        "SupportsVariableTileSize": True,
        "n_intput_channel": c["n_bands_in"],  # sic: arcgis.learn's key
        "n_channel": c["n_bands_out"],
        "NormalizationStats": arcgis_stats(input_norm) if isinstance(input_norm, BandNorm) else None,
        "NormalizationStats_b": arcgis_stats(target_norm) if not is_mask else None,
        "ArcGISLearnVersion": "toolkit " + __version__,
        "ImageSpaceUsed": "MAP_SPACE",
    }
    emd |= model_keys
    emd["Toolkit"] = {"version": __version__, "config": c, "input_norm": input_norm.to_dict(),
                      "target_norm": target_norm.to_dict(), "history": history,
                      "metrics": metrics, "footprint_settings": footprint_settings}
    if run:
        emd["Toolkit"]["run"] = run
    if is_mask:
        from matplotlib import colormaps

        tab10 = colormaps["tab10"]
        emd["Classes"] = [
            {"Value": int(k["Value"]), "Name": str(k.get("Name", k["Value"])),
             "Color": [int(v) for v in k["Color"][:3]] if k.get("Color") and min(k["Color"][:3]) >= 0
             else [round(255 * v) for v in tab10(i % 10)[:3]]}
            for i, k in enumerate(target_norm.classes)]
    emd.update({k: v for k, v in metrics.items()})
    return emd


def arcgis_stats(norm: BandNorm) -> dict:
    """A band normalisation in arcgis.learn's ``NormalizationStats`` keys."""
    return {"band_min_values": norm.min, "band_max_values": norm.max,
            "band_mean_values": norm.mean, "band_std_values": norm.std,
            "scaled_min_values": norm.low.tolist(), "scaled_max_values": norm.high.tolist()}
