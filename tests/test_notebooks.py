"""The example notebooks execute end to end (nbclient, run from notebooks/ as a user would)."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.parametrize("name", ["quickstart.ipynb"])
def test_notebook_executes(name, tmp_path, monkeypatch):
    # Execute a temporary copy, so outputs are never written into the repo's notebook.
    copy = tmp_path / name
    shutil.copyfile(NOTEBOOKS_DIR / name, copy)
    nb = nbformat.read(copy, as_version=4)
    # The kernel inherits TMPDIR: the notebook's tempfile.mkdtemp() run dir lands under tmp_path.
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    client = NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS_DIR)}}
    )
    client.execute()  # raises CellExecutionError if any cell fails

    errors = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    assert not errors
    assert list(tmp_path.glob("vla_hydra_quickstart_*/learning_curve.png")), (
        "notebook did not save its figure"
    )
