"""Writing output so that nothing half-written is ever left behind."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def check_output_folder(dest: str | os.PathLike, *, overwrite: bool, role: str = "out_folder") -> Path:
    """Refuse an output folder that already holds files, unless ``overwrite``."""
    dest = Path(dest)
    if dest.exists():
        if not dest.is_dir():
            raise FileExistsError(f"{role} {dest} is a file, expected a folder (or nothing) there.")
        entries = list(dest.iterdir())
        if entries and not overwrite:
            raise FileExistsError(
                f"{role} {dest} already holds {len(entries)} entries; pass overwrite=True to "
                "replace it, or choose an empty or new folder."
            )
    return dest


@contextmanager
def atomic_folder(dest: str | os.PathLike, *, overwrite: bool) -> Iterator[Path]:
    """Yield an empty staging folder beside ``dest``; move it to ``dest`` when the block succeeds.

    If the block raises, the staging folder is removed and ``dest`` is left as it was. With
    ``overwrite``, an existing ``dest`` is replaced only once the new folder is complete.
    """
    dest = check_output_folder(dest, overwrite=overwrite)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it private; give it a normal folder's mode
    try:
        yield staging
        old = None
        if dest.exists():
            old = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.old")
            os.replace(dest, old)
        os.replace(staging, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@contextmanager
def atomic_file(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; move it to ``dest`` when the block succeeds.

    Readers never see a half-written ``dest``: it is the old file or the complete new one.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # The temporary name keeps the extension: GDAL picks drivers (GeoPackage, ...) by it.
    fd, name = tempfile.mkstemp(prefix=f".{dest.stem}.", suffix=f".partial{dest.suffix}", dir=dest.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
