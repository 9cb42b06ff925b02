"""The Colab notebooks in experiments/ run end to end in smoke mode (SMOKE=True, CPU, demo data).

Each notebook is executed with nbclient in a fresh kernel (the test's Python) from experiments/,
the way `jupyter nbconvert --execute` would; a failing cell fails the test with its traceback.
"""

import glob
import os
import re
import sys

import pytest

from tests.helpers import compilation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = os.path.join(REPO, "experiments")
NOTEBOOKS = sorted(glob.glob(os.path.join(EXPERIMENTS, "*.ipynb")))

pytestmark = pytest.mark.slow


def test_there_are_three_notebooks():
    assert [os.path.basename(p)[:3] for p in NOTEBOOKS] == ["01_", "02_", "03_"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs_in_smoke_mode(path, monkeypatch, tmp_path, tmp_path_factory):
    nbformat = pytest.importorskip("nbformat", reason="executing notebooks needs nbformat")
    nbclient = pytest.importorskip("nbclient", reason="executing notebooks needs nbclient")
    pytest.importorskip("ipykernel", reason="executing notebooks needs ipykernel")

    notebook = nbformat.read(path, as_version=4)
    parameters = [i for i, cell in enumerate(notebook.cells)
                  if "parameters" in cell.get("metadata", {}).get("tags", [])]
    assert len(parameters) == 1, "one cell tagged 'parameters' (papermill's convention)"
    assert "SMOKE = " in notebook.cells[parameters[0]].source
    # Inject the smoke parameters after the defaults, as papermill does.
    notebook.cells.insert(parameters[0] + 1, nbformat.v4.new_code_cell("SMOKE = True"))
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert not re.search(r"^\s*(def|class)\s", cell.source, re.MULTILINE), (
                "library code belongs in the package, not in a notebook:\n" + cell.source)

    # A Colab-like process: one CPU device (not the tests' 8; the tests' compile level), a
    # compilation cache shared by the notebooks (they compile the same tiny model), the kernel is
    # this Python.
    monkeypatch.setenv("XLA_FLAGS", compilation.xla_flags(1))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "nb_xla"))
    monkeypatch.setenv("PYTHONPATH", REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # The notebooks' smoke mode writes to tempfile.mkdtemp() directories, as a Colab VM's /tmp is
    # thrown away; here they go under pytest's temporary directory, which pytest rotates (notebook
    # 03 alone writes ~300 MB: a random ResNet-50's .pth and its conversion).
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", allow_errors=False,
        resources={"metadata": {"path": EXPERIMENTS}})
    client.kernel_manager_class = _manager_for_this_python(client)
    client.execute()
    outputs = "".join(output.get("text", "") for cell in notebook.cells
                      for output in cell.get("outputs", []))
    assert "Traceback" not in outputs


def _manager_for_this_python(client):
    """A kernel manager that starts ipykernel with this interpreter (the project's venv)."""
    from jupyter_client.manager import KernelManager

    class ThisPythonKernelManager(KernelManager):
        def format_kernel_cmd(self, extra_arguments=None):
            command = super().format_kernel_cmd(extra_arguments)
            return [sys.executable] + command[1:] if command and "python" in command[0] else command

    return ThisPythonKernelManager
