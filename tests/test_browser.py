"""The quickstart notebook runs in a real JupyterLab, driven by headless Chromium through Playwright.

Needs Debian's chromium (``apt-get install chromium``; ``.ci/run`` installs it under CI) and the
``playwright`` Python package; Playwright never downloads a browser here. Without chromium the tests
skip and ``pytest -ra`` prints why. ``HSBS_UPDATE_SCREENSHOT=1`` also writes the screenshot to
figures/jupyterlab_quickstart.png for the README.
"""
import os
import shutil
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import nbformat
import pytest

from jupyterlab_harness import JupyterLabServer, running_jupyterlab

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "notebooks" / "00_quickstart.ipynb"
README_SCREENSHOT = ROOT / "figures" / "jupyterlab_quickstart.png"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
RUN_TIMEOUT_MS = 1_200_000  # catches a hung kernel only: the quickstart's speed is measured by hsbs bench

# Selectors checked against JupyterLab 4.6.
NOTEBOOK_CELL = ".jp-NotebookPanel .jp-Notebook .jp-Cell"
DIALOG = ".jp-Dialog"
# The indicator reads "idle" for a moment before any kernel exists ("No Kernel"), so a kernel counts
# as ready once it has a name and is idle, or as missing once a dialog (Select Kernel) opened.
KERNEL_READY_OR_DIALOG_JS = """() => {
    if (document.querySelector('%s')) return true;
    const name = document.querySelector('.jp-NotebookPanel .jp-Toolbar-kernelName')?.textContent.trim();
    const status = document.querySelector('.jp-NotebookPanel .jp-Notebook-ExecutionIndicator')?.dataset.status;
    return Boolean(name) && name !== 'No Kernel' && status === 'idle';
}""" % DIALOG
RENDERED_IMAGE = ".jp-NotebookPanel .jp-OutputArea-output.jp-RenderedImage img"

# Run All finished when no code cell waits ("[*]"); it finished cleanly when every non-empty code
# cell got a number. IPython tracebacks render as stderr text, so an error is recognised by its
# traceback header, which a warning on stderr never carries.
NOTEBOOK_STATE_JS = """() => {
    const cells = [...document.querySelectorAll('.jp-NotebookPanel .jp-Notebook .jp-CodeCell')];
    const prompts = cells.map(cell => ({
        prompt: (cell.querySelector('.jp-InputPrompt')?.textContent ?? '').trim(),
        empty: !(cell.querySelector('.jp-InputArea-editor .cm-content')?.textContent ?? '').trim(),
    }));
    const outputs = [...document.querySelectorAll('.jp-NotebookPanel .jp-OutputArea-output')];
    return {
        codeCells: prompts.length,
        waiting: prompts.filter(p => p.prompt.includes('*')).length,
        unexecuted: prompts.filter(p => !p.empty && !/\\[\\d+\\]/.test(p.prompt)).length,
        errors: outputs.filter(o => o.getAttribute('data-mime-type') === 'application/vnd.jupyter.error'
                                 || /Traceback \\(most recent call last\\)/.test(o.textContent))
                       .map(o => o.textContent.slice(0, 2000)),
        images: [...document.querySelectorAll('%s')]
                    .filter(img => img.complete && img.naturalWidth > 0)
                    .map(img => ({width: img.naturalWidth, height: img.naturalHeight,
                                  code: img.closest('.jp-CodeCell')
                                           ?.querySelector('.jp-InputArea-editor .cm-content')?.textContent ?? ''})),
    };
}""" % RENDERED_IMAGE
RUN_FINISHED_JS = "() => { const s = (%s)(); return s.waiting === 0 && (s.unexecuted === 0 || s.errors.length > 0); }" \
    % NOTEBOOK_STATE_JS


def _require_browser() -> str:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium not installed: apt-get install chromium (browser test of JupyterLab skipped)")
    pytest.importorskip("playwright.sync_api", reason='playwright not installed: pip install -e ".[dev]"')
    return chromium


def _server_env(tmp_path: Path) -> dict:
    """What a person's Lab would see, plus SMOKE=1; kernels inherit it from the server."""
    env = dict(os.environ, SMOKE="1", HSBS_RUNS=str(tmp_path / "runs"), HSBS_NO_PROGRESS="1",
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    env.pop("MPLBACKEND", None)  # the test process's Agg would hide plt.show() figures in the kernel
    return env


def _run_all_in_lab(server: JupyterLabServer, notebook: str, *, chromium: str, screenshot: Path,
                    workspace: str | None = None) -> dict:
    """Open ``notebook`` in Lab, Run All Cells, save it; return the page state and the saved notebook."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(server.notebook_url(notebook, workspace=workspace))
            page.wait_for_selector(NOTEBOOK_CELL, timeout=60_000)
            # The kernel named by the notebook's kernelspec starts by itself: idle, and no dialog.
            page.wait_for_function(KERNEL_READY_OR_DIALOG_JS, timeout=60_000, polling=200)
            kernel_dialogs = page.locator(DIALOG).all_inner_texts()
            if kernel_dialogs:
                _take_screenshot(page, screenshot)
                return dict(kernel_dialogs=kernel_dialogs)
            sessions = server.api("/api/sessions")

            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
            started = time.perf_counter()
            try:
                page.wait_for_function(RUN_FINISHED_JS, timeout=RUN_TIMEOUT_MS, polling=1000)
                timed_out = False
            except PlaywrightTimeout:
                timed_out = True  # reported by the caller together with the page state
            seconds = time.perf_counter() - started
            state = page.evaluate(NOTEBOOK_STATE_JS)
            state.update(timed_out=timed_out, dialogs_after_run=page.locator(DIALOG).all_inner_texts())
            _take_screenshot(page, screenshot)
            if timed_out:
                return dict(state, kernel_dialogs=kernel_dialogs, sessions=sessions, seconds=seconds, saved=None)

            page.keyboard.press("ControlOrMeta+s")
            page.wait_for_function(
                "() => !document.querySelector('.lm-TabBar-tab.jp-mod-current.jp-mod-dirty')", timeout=30_000)
        finally:
            browser.close()
    saved = nbformat.read(server.root_dir / notebook, as_version=4)
    return dict(state, kernel_dialogs=kernel_dialogs, sessions=sessions, seconds=seconds, saved=saved)


def _take_screenshot(page, path: Path) -> None:
    """The notebook with its first figure in view; the file browser folded away to give it room."""
    path.parent.mkdir(parents=True, exist_ok=True)
    left_tab = page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current")
    if left_tab.count() and not page.locator(DIALOG).count():
        left_tab.first.click(timeout=5_000)
    # The first figure's cell from its top, so the code and its prompt number show above the figure.
    image = page.locator(RENDERED_IMAGE).first
    if image.count():
        # Cells above settle their heights once rendered (content-visibility), so scroll until still.
        for _ in range(5):
            image.evaluate("img => img.closest('.jp-CodeCell').scrollIntoView({block: 'start'})")
            page.wait_for_timeout(300)
            if abs(image.evaluate("img => img.closest('.jp-CodeCell').getBoundingClientRect().top"
                                  " - document.querySelector('.jp-NotebookPanel .jp-Toolbar')"
                                  ".getBoundingClientRect().bottom")) < 40:
                break
    page.wait_for_timeout(300)
    page.screenshot(path=str(path), full_page=True)


def _saved_problems(saved) -> dict:
    code = [c for c in saved.cells if c.cell_type == "code" and c.source.strip()]
    return {
        "not_executed": [i for i, c in enumerate(code) if c.execution_count is None],
        "errors": [f"{o.ename}: {o.evalue}" for c in code for o in c.outputs if o.output_type == "error"],
        "images": sum("image/png" in o.get("data", {}) for c in code for o in c.outputs),
    }


def _tiny_notebook(path: Path, *, failing: bool, kernelspec: bool = True) -> Path:
    notebook = nbformat.v4.new_notebook()
    if kernelspec:
        notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                           "language": "python"}
    cells = ["import os\n%matplotlib inline\nimport matplotlib.pyplot as plt",
             'SMOKE = int(os.environ.get("SMOKE", "0"))\nassert SMOKE == 1, "SMOKE did not reach the kernel"',
             "import warnings\nwarnings.warn('a warning on stderr is not an error')",
             "1 / 0" if failing else "",
             "fig, ax = plt.subplots(figsize=(3, 2))\nax.plot([1, 3, 2])\nplt.show()"]
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    nbformat.write(notebook, path)
    return path


@pytest.mark.browser
def test_quickstart_runs_in_jupyterlab(tmp_path):
    chromium = _require_browser()
    if not QUICKSTART.exists():
        pytest.skip(f"{QUICKSTART.relative_to(ROOT)} does not exist yet")
    notebook = f"notebooks/{QUICKSTART.name}"
    screenshot = tmp_path / "jupyterlab_quickstart.png"
    start = time.perf_counter()
    with running_jupyterlab([QUICKSTART], subdir="notebooks", links={"configs": ROOT / "configs"},
                            env=_server_env(tmp_path)) as server:
        result = _run_all_in_lab(server, notebook, chromium=chromium, screenshot=screenshot)
    total = time.perf_counter() - start

    assert not result["kernel_dialogs"], f"a dialog opened with the notebook: {result['kernel_dialogs']}"
    assert [s["kernel"]["name"] for s in result["sessions"]] == ["python3"], result["sessions"]
    assert not result["timed_out"], (f"Run All did not finish in {RUN_TIMEOUT_MS // 1000} s: {result['waiting']} "
                                     f"cells waiting, {result['unexecuted']} not run (screenshot: {screenshot})")
    assert not result["errors"], "cells show errors in JupyterLab:\n" + "\n\n".join(result["errors"])
    assert result["unexecuted"] == 0 and result["waiting"] == 0, \
        f"{result['unexecuted']} code cells did not run, {result['waiting']} still waiting"
    assert not result["dialogs_after_run"], f"a dialog opened while running: {result['dialogs_after_run']}"
    synthfer_figures = [image for image in result["images"] if "synthfer" in image["code"].lower()
                        and image["width"] >= 200 and image["height"] >= 200]
    assert synthfer_figures, f"no SynthFER figure rendered in the page (images: {result['images']})"
    problems = _saved_problems(result["saved"])
    assert not problems["not_executed"] and not problems["errors"], problems
    assert any("synthfer" in cell.source.lower() and any("image/png" in o.get("data", {}) for o in cell.outputs)
               for cell in result["saved"].cells if cell.cell_type == "code"), "the saved notebook holds no SynthFER figure"
    assert screenshot.stat().st_size > 10_000
    if os.environ.get("HSBS_UPDATE_SCREENSHOT") == "1":
        README_SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(screenshot, README_SCREENSHOT)
    print(f"quickstart in JupyterLab: Run All {result['seconds']:.0f} s, whole test {total:.0f} s")


@pytest.mark.browser
def test_failing_cells_and_kernel_dialogs_are_caught_in_jupyterlab(tmp_path):
    """The checks above can fail: a raising cell shows as an error and stops Run All; a notebook
    without kernelspec metadata opens the kernel-selection dialog."""
    chromium = _require_browser()
    failing = _tiny_notebook(tmp_path / "failing.ipynb", failing=True)
    no_kernelspec = _tiny_notebook(tmp_path / "no_kernelspec.ipynb", failing=False, kernelspec=False)
    with running_jupyterlab([failing, no_kernelspec], env=_server_env(tmp_path)) as server:
        result = _run_all_in_lab(server, failing.name, chromium=chromium, screenshot=tmp_path / "failing.png",
                                 workspace="failing")
        without_kernel = _run_all_in_lab(server, no_kernelspec.name, chromium=chromium,
                                         screenshot=tmp_path / "no_kernelspec.png", workspace="no-kernelspec")
        assert server.process.poll() is None
    assert server.process.poll() is not None, "the server outlived its context manager"

    assert not result["kernel_dialogs"] and not result["dialogs_after_run"] and not result["timed_out"]
    assert len(result["errors"]) == 1 and "ZeroDivisionError" in result["errors"][0], result["errors"]
    assert result["unexecuted"] == 1, "Run All stops at the failing cell, leaving the figure cell unrun"
    assert result["images"] == []
    assert _saved_problems(result["saved"]) == {"not_executed": [4], "images": 0,
                                                "errors": ["ZeroDivisionError: division by zero"]}
    # The warning cell ran and wrote to stderr without being taken for an error.
    warning_outputs = result["saved"].cells[2].outputs
    assert [o.name for o in warning_outputs] == ["stderr"] and "not an error" in warning_outputs[0].text

    assert any("Select Kernel" in text for text in without_kernel["kernel_dialogs"]), without_kernel


def test_jupyterlab_server_wants_its_token_serves_a_copy_and_stops(tmp_path):
    """No browser needed: the helper's server is private to its token and gone after the block."""
    notebook = _tiny_notebook(tmp_path / "tiny.ipynb", failing=False)
    original = notebook.read_bytes()
    with running_jupyterlab([notebook], subdir="notebooks", env=_server_env(tmp_path)) as server:
        assert server.api("/api/status")["kernels"] == 0
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(f"{server.base_url}/api/contents", timeout=5)
        assert denied.value.code == 403
        served = server.root_dir / "notebooks" / "tiny.ipynb"
        served.write_text("{}")  # what the browser saves lands in the copy
        assert "python3" in server.api("/api/kernelspecs")["kernelspecs"]
        root_dir, port = server.root_dir, server.port
    assert server.process.poll() is not None
    assert not root_dir.exists()
    assert notebook.read_bytes() == original
    with socket.socket() as probe, pytest.raises(OSError):
        probe.settimeout(2)
        probe.connect(("127.0.0.1", port))
