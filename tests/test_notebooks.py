"""notebooks/analyze_runs.ipynb runs top to bottom (offline) on a tiny sweep; it is kept without outputs."""

import nbformat
from conftest import ROOT

NOTEBOOK = ROOT / "notebooks" / "analyze_runs.ipynb"


def test_notebook_is_valid_and_stripped():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4 and nb.metadata.kernelspec.name == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_notebook_runs_on_a_sweep(tiny_sweep, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("DISTILL_RUNS", str(tiny_sweep))  # the kernel inherits this environment
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # kernel "python3" is ipykernel's own spec: jupyter_client launches it with this interpreter (sys.executable)
    NotebookClient(nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert f"runs from {tiny_sweep}" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2  # score vs temperature (1 and 4 were swept) and score vs size
    tables = [o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
    assert tables and "| job | status | loss.temperature |" in tables[0]

