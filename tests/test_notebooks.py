"""The notebooks run top to bottom in quick mode (TOOLKIT_QUICK=1: tiny networks, two epochs)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def test_notebooks_are_saved_without_outputs():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, path.name


@pytest.mark.parametrize("name", ["01_building_footprints.ipynb", "02_image_translation.ipynb",
                                  "03_unpaired_translation.ipynb", "04_high_resolution_translation.ipynb"])
def test_notebook_runs(name, tmp_path, monkeypatch, atlanta, rotterdam, banepa):
    # the fixtures fetch the samples first, so a missing download fails with its own message
    monkeypatch.setenv("TOOLKIT_QUICK", "1")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any error
    images = sum("image/png" in out.get("data", {}) for cell in nb.cells if cell.cell_type == "code"
                 for out in cell.outputs)
    assert images >= 5  # the figures are the point
    assert (tmp_path / "work").is_dir()
