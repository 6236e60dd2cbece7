"""Every numbered notebook runs top to bottom headless with SMOKE=1, and is committed clean."""
import json
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
PARAMETER_NAMES = ("DATA", "DEVICE", "SMOKE", "EPOCHS", "SEED", "CKPT")


def test_there_are_numbered_notebooks():
    assert len(NOTEBOOKS) >= 9, [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path):
    notebook = json.loads(path.read_text())
    dirty = [i for i, cell in enumerate(notebook["cells"]) if cell["cell_type"] == "code"
             and (cell.get("outputs") or cell.get("execution_count") is not None)]
    assert not dirty, f"{path.name}: cells {dirty} carry outputs or execution counts; strip them before committing"
    assert notebook["metadata"].get("kernelspec", {}).get("name") == "python3", "kernelspec metadata must stay"


CODE_WIDTH = 100   # wider code lines are cut off in a JupyterLab cell on a laptop screen


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_code_lines_fit_a_cell(path):
    wide = [(cell.get("id"), len(line)) for cell in nbformat.read(path, as_version=4).cells
            if cell.cell_type == "code" for line in cell.source.splitlines() if len(line) > CODE_WIDTH]
    assert not wide, f"{path.name}: code lines wider than {CODE_WIDTH} characters (cell id, width): {wide}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_one_parameters_cell_and_no_library_code(path):
    notebook = nbformat.read(path, as_version=4)
    tagged = [c for c in notebook.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: expected exactly one cell tagged 'parameters'"
    for name in PARAMETER_NAMES:
        assert f"{name} =" in tagged[0].source, f"{path.name}: parameters cell lacks {name}"
    code = "\n".join(c.source for c in notebook.cells if c.cell_type == "code")
    assert "\nclass " not in "\n" + code, f"{path.name}: notebooks call the library; classes belong in hsbs_lib"
    assert notebook.cells[0].cell_type == "markdown" and "minutes" in notebook.cells[0].source.lower(), \
        f"{path.name}: the first cell says what it teaches and how long it takes"


SCRATCH = {".git", "__pycache__", ".pytest_cache", ".ipynb_checkpoints", ".venv"}


def repository_snapshot() -> dict[str, tuple[int, int]]:
    """relative path -> (size, mtime) of every file in the repository outside caches."""
    snapshot = {}
    for folder, subfolders, files in os.walk(ROOT):
        subfolders[:] = [name for name in subfolders if name not in SCRATCH]
        for name in files:
            stat = (Path(folder) / name).stat()
            snapshot[str((Path(folder) / name).relative_to(ROOT))] = (stat.st_size, stat.st_mtime_ns)
    return snapshot


def test_notebooks_save_figures_under_the_runs_folder():
    for path in NOTEBOOKS:
        code = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
        for line in code.splitlines():
            if "save_figure(" in line and "import" not in line:
                assert "out=" in line, \
                    f"{path.name}: `{line.strip()}` writes into figures/; pass out=notebook_figures_dir()"


def test_smoke_splits_hold_every_class():
    from hsbs_lib.data.synthfer import sample_parameters
    from hsbs_lib.tutorial import recipe

    for overrides in ([], ["data.n_test=64", "data.n_val=64"], ["data.n_test=32", "data.synth_seed=3"]):
        data = recipe("synthfer_hsbs", overrides, smoke=True).data
        for split, n in (("test", data.n_test), ("val", data.n_val)):
            labels = sample_parameters(range(n), seed=data.synth_seed, split=split)["label"]
            assert set(labels.tolist()) == set(range(7)), f"{overrides}: the first {n} {split} images miss a class"


def test_smoke_runs_draw_no_progress_bars(monkeypatch):
    from hsbs_lib.constants import progress_disabled

    monkeypatch.delenv("HSBS_NO_PROGRESS", raising=False)
    monkeypatch.setenv("SMOKE", "0")
    assert not progress_disabled()
    monkeypatch.setenv("SMOKE", "1")     # a saved SMOKE notebook would keep its bars frozen at 0 %
    assert progress_disabled()


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_headless_in_smoke_mode(path, tmp_path, monkeypatch):
    monkeypatch.setenv("SMOKE", "1")
    monkeypatch.setenv("HSBS_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("HSBS_NO_PROGRESS", "1")
    monkeypatch.setenv("HSBS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HSBS_FIGURES")   # so a notebook that writes into the committed figures/ is caught
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))
    notebook = nbformat.read(path, as_version=4)
    # The timeout only catches a hung cell; how long a notebook takes is measured by `hsbs bench
    # --sections notebooks`, never asserted here (a loaded machine must not fail the suite).
    client = NotebookClient(notebook, timeout=1200, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    before = repository_snapshot()
    client.execute()
    changed = sorted(name for name, stamp in repository_snapshot().items() ^ before.items())
    assert not changed, f"{path.name} changed files of the repository (write under the runs folder): {changed[:10]}"


# A title fragment of every method's paper; a notebook that names the method cites it in full in its
# opening cell, before the first mention (docs/METHODS.md carries the same references).
CITED = {
    r"\bHSBS\b(?!_)": "Comprehensive Boosting of Facial Expression Recognition via Hierarchical Semantic and",
    r"\bCLCL\b": "W. Xie, Z. Peng, L. Shen, W. Lu, Y. Zhang and S. Song",
    r"\bPhaNet\b": "Y. Liu, J. Peng, J. Zeng and S. Shan",
    r"\bMFER\b": "J. Xu, Y. Li, G. Yang, L. He and K. Luo",
    r"Grad-CAM": "R. R. Selvaraju, M. Cogswell, A. Das, R. Vedantam, D. Parikh and D. Batra",
}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_method_named_is_cited_in_full_in_the_opening_cell(path):
    import re

    cells = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "markdown"]
    opening = " ".join(cells[0].source.split())
    text = "\n".join(c.source for c in cells)
    for pattern, authors in CITED.items():
        if re.search(pattern, text):
            assert authors in opening, f"{path.name} names {pattern.strip(chr(92) + 'b')} without citing it in full"
    methods = " ".join((ROOT / "docs" / "METHODS.md").read_text().split())
    assert all(authors in methods for authors in list(CITED.values())[:4]), "docs/METHODS.md lacks a full reference"
