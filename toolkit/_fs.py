"""Writing output so that nothing is ever lost.

The rule, applied by every writer of the toolkit: **it only ever replaces what it wrote itself,
and never an input.**

- :func:`check_not_input` refuses an output path that is an input, contains one, or lies inside
  an input folder, whatever ``overwrite`` says.
- :func:`atomic_folder` / :func:`atomic_file` write to a temporary name beside the output and
  move it into place when complete, so the final name holds the old content or the new, never a
  half-written one. Temporary names carry the writer's process id; those of a process that no
  longer runs (killed with ``kill -9``) are removed the next time the same output is written
  (an old folder moved aside is put back).
- A folder the toolkit writes holds a small manifest (:data:`MANIFEST`) naming its kind and
  every file it wrote; ``overwrite=True`` replaces a folder only when it is empty or when every
  file in it is listed in a manifest of the same kind (:func:`check_output_folder`).
- Files are created with ``open()``'s usual mode under the process umask (the umask itself is
  never touched: it is process-wide and other threads may be creating files).

Layer: formats, I/O and runtime.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["MANIFEST", "atomic_file", "atomic_folder", "check_not_input", "check_output_file",
           "check_output_folder", "check_writable_folder", "foreign_files", "remove_stale",
           "remove_stale_in", "sha256"]

MANIFEST = ".toolkit-output.json"


# --- inputs are never outputs ----------------------------------------------------------------------


def check_not_input(output: str | os.PathLike, inputs: Iterable[str | os.PathLike | None], *,
                    role: str) -> None:
    """Raise ``ValueError`` naming both paths when ``output`` is one of ``inputs``, contains one
    (a folder holding an input), or lies inside an input that is a folder.

    Paths are compared after resolving links, so an alias of an input is caught too.
    """
    out = Path(output).resolve()
    for item in inputs:
        if item is None:
            continue
        source = Path(item).resolve()
        same = out == source or (out.exists() and source.exists() and os.path.samefile(out, source))
        if same:
            how = "is"
        elif source.is_relative_to(out):
            how = "contains"
        elif source.is_dir() and out.is_relative_to(source):
            how = "lies inside"
        else:
            continue
        raise ValueError(f"{role} {output} {how} the input {item}; the toolkit never writes over "
                         "its inputs: choose an output outside them.")


def check_writable_folder(folder: str | os.PathLike, *, role: str, hint: str = "") -> Path:
    """Create ``folder`` if needed and check that a file can be written in it, before any long
    work; ``PermissionError`` (or the ``OSError``) names the folder and adds ``hint``."""
    import tempfile

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise PermissionError(f"{role} {folder} is not writable ({err.strerror or err}). {hint}".rstrip()) from err
    return folder


# --- temporary names and what a killed run left ------------------------------------------------------

_TEMP_KINDS = ("partial", "old")


def _temp_path(dest: Path, kind: str) -> Path:
    """``.<name>.<pid>-<hex>.<kind><suffix>`` beside ``dest``; files keep their extension, since
    GDAL picks drivers (GeoTIFF, GeoPackage...) by it."""
    suffix = dest.suffix if kind == "partial" else ""
    return dest.with_name(f".{dest.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.{kind}{suffix}")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


_TEMP_NAME = re.compile(rf"^\.(?P<name>.+)\.(?P<pid>\d+)-[0-9a-f]{{8}}\.(?P<kind>{'|'.join(_TEMP_KINDS)})")


def remove_stale(dest: str | os.PathLike) -> list[Path]:
    """Clear what a killed writer of ``dest`` left beside it (temporaries whose process no longer
    runs); return the paths removed.

    A killed folder replacement can leave the old folder moved aside (``.old``) and the new one
    not yet in place: the old one is then put back under ``dest``, not deleted.
    """
    dest = Path(dest)
    return _clear_stale(dest.parent, only=dest.name)


def remove_stale_in(folder: str | os.PathLike) -> list[Path]:
    """:func:`remove_stale` for every output in ``folder`` (e.g. the checkpoints of many fits)."""
    return _clear_stale(Path(folder))


def _clear_stale(folder: Path, only: str | None = None) -> list[Path]:
    if not folder.is_dir():
        return []
    pattern = f".{glob.escape(only)}.*" if only is not None else ".*"
    removed = []
    for path in sorted(folder.glob(pattern), key=lambda p: p.name):
        match = _TEMP_NAME.match(path.name)
        if not match or (only is not None and match["name"] != only) or _pid_alive(int(match["pid"])):
            continue
        dest = folder / match["name"]
        if match["kind"] == "old" and not dest.exists() and not dest.is_symlink():
            os.replace(path, dest)  # killed between moving the old folder out and the new one in
            continue
        _remove(path)
        removed.append(path)
    return removed


# --- folders ------------------------------------------------------------------------------------------


def foreign_files(folder: Path, kind: str) -> list[str]:
    """Files in ``folder`` (relative paths) that are not the toolkit's own output of ``kind``:
    all of them when the folder has no manifest of that kind."""
    listed: set[str] = set()
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        if isinstance(manifest, dict) and manifest.get("kind") == kind:
            listed = set(manifest.get("files", []))
    except (OSError, ValueError):
        pass
    foreign = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if rel == MANIFEST or (path.is_dir() and not path.is_symlink()):
            continue
        if rel not in listed or path.is_symlink():
            foreign.append(rel)
    return foreign


def check_output_folder(dest: str | os.PathLike, *, overwrite: bool, kind: str,
                        role: str = "out_folder") -> Path:
    """Check that ``dest`` may become a new ``kind`` output folder: it does not exist, is empty,
    or (with ``overwrite``) is an earlier output of the same kind with nothing else in it.

    What a killed earlier writer left is cleared first (:func:`remove_stale`)."""
    dest = Path(dest)
    remove_stale(dest)  # it may put back an old folder a killed run had moved aside
    if not dest.exists():
        if dest.is_symlink():
            raise FileExistsError(f"{role} {dest} is a broken link; remove it or choose another name.")
        return dest
    if not dest.is_dir():
        raise FileExistsError(f"{role} {dest} is a file, expected a folder (or nothing) there.")
    entries = list(dest.iterdir())
    if not entries:
        return dest
    if not overwrite:
        raise FileExistsError(f"{role} {dest} already holds {len(entries)} entries; pass "
                              "overwrite=True to replace it, or choose an empty or new folder.")
    foreign = foreign_files(dest, kind)
    if foreign:
        few = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise FileExistsError(
            f"{role} {dest} holds files the toolkit did not write there as {kind} output ({few}); "
            "it only replaces its own output: choose another folder, or move those files away.")
    return dest


@contextmanager
def atomic_folder(dest: str | os.PathLike, *, overwrite: bool, kind: str,
                  role: str = "out_folder") -> Iterator[Path]:
    """Yield an empty staging folder beside ``dest``; when the block succeeds, write the manifest
    of ``kind`` listing every file in it and move it to ``dest``.

    If the block raises, the staging folder is removed and ``dest`` is left as it was. With
    ``overwrite``, an existing ``dest`` (checked by :func:`check_output_folder`) is replaced only
    once the new folder is complete.
    """
    from toolkit import __version__

    dest = check_output_folder(dest, overwrite=overwrite, kind=kind, role=role)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = _temp_path(dest, "partial")
    staging.mkdir()  # mode 0777 less the umask, as any new folder
    try:
        yield staging
        files = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
        (staging / MANIFEST).write_text(json.dumps(
            {"kind": kind, "written_by": f"toolkit {__version__}", "files": files}) + "\n")
        old = None
        if dest.exists():
            check_output_folder(dest, overwrite=overwrite, kind=kind, role=role)  # changed meanwhile?
            old = _temp_path(dest, "old")
            os.replace(dest, old)
        os.replace(staging, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except Exception as err:
        cause = _with_path(err, dest, staging)
        shutil.rmtree(staging, ignore_errors=True)
        if cause is not err:
            raise cause from err
        raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# --- files ----------------------------------------------------------------------------------------------


def check_output_file(dest: str | os.PathLike, *, overwrite: bool, role: str,
                      owned: Callable[[Path], bool] | None = None, what: str = "output") -> Path:
    """Check that ``dest`` may be written: a file name (not a folder) that does not exist, or,
    with ``overwrite``, an existing file that ``owned`` recognises as the toolkit's own ``what``."""
    dest = Path(dest)
    if dest.is_dir():
        raise IsADirectoryError(f"{role} {dest} is a folder; give a file name (e.g. {dest / 'out.tif'}).")
    if dest.exists() or dest.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{role} {dest} exists; pass overwrite=True to replace it.")
        if owned is not None and not owned(dest):
            raise FileExistsError(f"{role} {dest} was not written by the toolkit as {what}; it only "
                                  "replaces its own output: choose another name, or remove the file.")
    return dest


@contextmanager
def atomic_file(dest: str | os.PathLike, *, overwrite: bool = True,
                owned: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``dest`` (not yet created); move it to ``dest`` when the
    block succeeds.

    Readers never see a half-written ``dest``: it is the old file or the complete new one.
    Temporaries of killed earlier writers of ``dest`` are removed first. The move is checked
    at the moment it happens, not only when the work began (a long prediction gives another
    program time to write the same name): with ``overwrite=False`` it creates ``dest`` or fails
    (a hard link, which never replaces a file), with ``owned`` it replaces an existing ``dest``
    only if ``owned(dest)`` still holds. ``FileExistsError`` naming ``dest`` otherwise, and the
    file found there is left as it is.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(dest)
    tmp = _temp_path(dest, "partial")
    try:
        yield tmp
        _move_into_place(tmp, dest, overwrite, owned)
    except Exception as err:
        cause = _with_path(err, dest, tmp)
        _remove(tmp)
        if cause is not err:
            raise cause from err
        raise
    except BaseException:
        _remove(tmp)
        raise
    finally:
        for sidecar in tmp.parent.glob(glob.escape(tmp.name) + ".*"):  # e.g. GDAL's .aux.xml
            sidecar.unlink(missing_ok=True)


def _with_path(err: Exception, dest: Path, tmp: Path) -> Exception:
    """An error of writing ``dest`` that says which file: an ``OSError`` without a file name
    gets ``dest``'s; any other error while the disk is full (torch's writer says only "file
    write failed") becomes ``OSError(ENOSPC)`` naming ``dest``. Other errors are returned as they are."""
    if isinstance(err, OSError) and err.errno and err.filename is None:
        return OSError(err.errno, err.strerror or os.strerror(err.errno), str(dest))
    if not isinstance(err, OSError) and _disk_full(tmp.parent):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dest))
    return err


def _disk_full(folder: Path) -> bool:
    try:
        stat = os.statvfs(folder)
    except (OSError, AttributeError):  # AttributeError: no statvfs (Windows)
        return False
    return stat.f_bavail * stat.f_frsize < 2**20


def _move_into_place(tmp: Path, dest: Path, overwrite: bool, owned: Callable[[Path], bool] | None) -> None:
    appeared = (f"{dest} appeared while the toolkit was writing it (another program or run wrote that "
                "name); it was left as it is. Choose another name")
    if not overwrite:
        try:
            os.link(tmp, dest)  # atomic: fails if the name exists, never replaces
        except FileExistsError:
            raise FileExistsError(f"{appeared}, or pass overwrite=True.") from None
        except OSError:  # a file system without hard links: check, then move
            if dest.exists() or dest.is_symlink():
                raise FileExistsError(f"{appeared}, or pass overwrite=True.") from None
            os.replace(tmp, dest)
            return
        tmp.unlink()
        return
    if owned is not None and (dest.exists() or dest.is_symlink()) and not owned(dest):
        raise FileExistsError(f"{appeared}: the toolkit only replaces its own output.")
    os.replace(tmp, dest)


def sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, as hex (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
