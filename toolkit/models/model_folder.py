"""Saved model folders in arcgis.learn's shape: ``<name>.pth``, ``<name>.emd``, figures, ``.dlpk``.

    <models>/<name>/
      <name>.pth                    state dicts only (torch.load(weights_only=True) reads them)
      <name>.emd                    JSON: arcgis.learn's Pix2Pix keys + the toolkit's own
      ModelCharacteristics/loss_graph.png, ModelCharacteristics/show_results.png
      <name>.dlpk                   a zip of the above
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path

import torch

from toolkit._fs import atomic_folder

__all__ = ["read_model_folder", "write_model_folder"]


def write_model_folder(dest: Path, name: str, *, weights: dict, emd: dict, figures: dict) -> Path:
    """Write the folder ``dest`` (replacing it once complete) and return the .emd path.

    ``figures`` maps file names under ``ModelCharacteristics/`` to matplotlib figures.
    """
    with atomic_folder(dest, overwrite=True) as staging:
        torch.save(weights, staging / f"{name}.pth")
        (staging / f"{name}.emd").write_text(json.dumps(emd, indent=2) + "\n")
        characteristics = staging / "ModelCharacteristics"
        characteristics.mkdir()
        for file_name, fig in figures.items():
            fig.savefig(characteristics / file_name, dpi=80, bbox_inches="tight")
        files = sorted(p for p in staging.rglob("*") if p.is_file())
        with zipfile.ZipFile(staging / f"{name}.dlpk", "w", zipfile.ZIP_DEFLATED) as archive:
            for path in files:
                archive.write(path, path.relative_to(staging).as_posix())
    return dest / f"{name}.emd"


def read_model_folder(path: str | os.PathLike) -> tuple[dict, dict, Path]:
    """Read a saved model: ``(emd, weights, emd_path)`` from its ``.emd``, its folder or its ``.dlpk``.

    Raises ``FileNotFoundError`` / ``ValueError`` naming the file that is missing or unreadable.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such model (.emd, model folder or .dlpk).")
    if path.suffix.lower() == ".dlpk":
        try:
            with zipfile.ZipFile(path) as archive, tempfile.TemporaryDirectory() as tmp:
                archive.extractall(tmp)
                emds = sorted(Path(tmp).glob("*.emd"))
                if not emds:
                    raise ValueError(f"{path}: the package holds no .emd file.")
                emd, weights, _ = read_model_folder(emds[0])
                return emd, weights, path
        except zipfile.BadZipFile as err:
            raise ValueError(f"{path}: not a readable .dlpk package ({err}).") from err
    if path.is_dir():
        emds = sorted(path.glob("*.emd"))
        if not emds:
            raise FileNotFoundError(f"{path}: the folder holds no .emd file.")
        path = emds[0]
    try:
        emd = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a valid .emd (JSON) file ({err}).") from err
    if emd.get("ModelType") != "Pix2Pix" or "Toolkit" not in emd:
        raise ValueError(f"{path}: not a Pix2Pix model saved by this toolkit (ModelType "
                         f"{emd.get('ModelType')!r}).")
    weights_path = path.parent / emd.get("ModelFile", f"{path.stem}.pth")
    if not weights_path.is_file():
        raise FileNotFoundError(f"{weights_path}: the model's weights file is missing.")
    try:
        weights = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{weights_path}: corrupt or unreadable weights file ({err}).") from err
    if not isinstance(weights, dict) or "generator" not in weights:
        raise ValueError(f"{weights_path}: holds no generator weights.")
    return emd, weights, path
