"""notebooks/reference/: complete, small, loaded by the notebooks, and regenerated from finished runs."""
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from PIL import Image

from hsbs_lib.engine import expected, quotes

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "notebooks" / "reference"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
LOADS = re.compile(r"""(?:(?:load_reference|reference_path)\(\s*f?|\bfile=)["']([^"']+)["']""")
# Where an explorer teaches best (issue 19): the notebook and the explorer it must call.
EXPLORERS = {"00": "synthfer_explorer", "03": "attention_explorer", "04": "similarity_explorer",
             "05": "confusion_explorer"}


def manifest() -> dict:
    return json.loads((REFERENCE / "manifest.json").read_text())


def notebook_code(path: Path) -> str:
    return "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")


def test_reference_folder_is_complete_and_small():
    files = manifest()
    on_disk = {p.relative_to(REFERENCE).as_posix() for p in REFERENCE.rglob("*") if p.is_file()}
    assert on_disk - {"manifest.json", "README.md"} == set(files), "manifest.json and the folder disagree"
    for name, entry in files.items():
        path = REFERENCE / name
        assert path.stat().st_size == entry["bytes"], f"{name}: size differs from manifest.json"
        assert path.stat().st_size <= expected.MAX_FILE_BYTES, f"{name}: larger than a reference file may be"
        assert not entry["source"].startswith("/"), f"{name}: manifest records a machine's absolute path"
        if path.suffix == ".json":
            json.loads(path.read_text())
        if path.suffix == ".png":
            with Image.open(path) as image:
                assert image.width <= expected.MAX_FIGURE_WIDTH
    assert not [p for p in REFERENCE.rglob("*.pt")], "no checkpoints in the reference folder"
    assert sum(p.stat().st_size for p in REFERENCE.rglob("*") if p.is_file()) < 2_000_000


def test_reference_holds_the_full_budget_numbers_the_notebooks_discuss():
    ablation = expected.load_reference("synthfer_ablation.json")
    assert ablation["seeds"] == [0, 1, 2, 3, 4]
    hsbs = expected.ablation_row(ablation["rows"], "hsbs")
    # The prose states these (notebooks 00, 03, 04 and 08, docs/BENCHMARKS.md): HSBS's and +HST's mean class
    # accuracy are no different from the baseline's, HST lifts layer1 and lowers layer3's pointing game, and
    # BSA lowers disgust recall.
    assert hsbs["mean_class_accuracy_verdict"] == "no difference"
    assert expected.ablation_row(ablation["rows"], "+HST")["mean_class_accuracy_verdict"] == "no difference"
    assert hsbs["layer1_pointing_hit_rate_verdict"] == "higher" and hsbs["layer1_energy_share_verdict"] == "higher"
    assert hsbs["layer3_pointing_hit_rate_verdict"] == "lower"
    assert hsbs["recall_disgust_verdict"] == "lower"
    assert expected.ablation_row(ablation["rows"], "+BSA")["recall_disgust_verdict"] == "lower"
    assert ablation["hsbs_vs_hst"]["recall_disgust_verdict"] == "lower"
    for run in ("demo_baseline", "demo_hsbs"):
        report = expected.load_reference(f"{run}/eval.json")
        assert report["split"] == "test" and report["n"] == 1000 and len(report["confusion_matrix"]) == 7


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_reads_only_existing_reference_files(path):
    files = set(manifest())
    code = notebook_code(path)
    for name in LOADS.findall(code):
        candidates = [name] if "{" not in name else [f for f in files if re.fullmatch(
            re.sub(r"\\\{[^}]*\\\}", ".+", re.escape(name)), f)]
        assert candidates and set(candidates) <= files, f"{path.name} reads {name}, not in notebooks/reference"
    text = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells)
    assert "reference" in text.lower() and "notebooks/reference" in text, \
        f"{path.name}: says what the full-budget reference shows (or that none exists) and where it lives"


@pytest.mark.parametrize("number", ["00", "03", "04", "05"])
def test_notebooks_load_the_reference_results(number):
    path = next(p for p in NOTEBOOKS if p.name.startswith(number))
    assert LOADS.search(notebook_code(path)), f"{path.name} shows no reference result"


@pytest.mark.parametrize("number,explorer", sorted(EXPLORERS.items()))
def test_notebook_uses_its_explorer(number, explorer):
    path = next(p for p in NOTEBOOKS if p.name.startswith(number))
    code = notebook_code(path)
    assert f"{explorer}(" in code and "show_explorer(" in code, f"{path.name} does not show {explorer}"


def test_compare_with_reference_table_says_n_a_for_missing_values():
    yours = {"accuracy": 0.5, "mean_class_accuracy": float("nan"), "macro_f1": 0.25,
             "per_class_recall": {"fear": 0.0}}
    reference = {"accuracy": 0.8, "mean_class_accuracy": 0.7, "macro_f1": 0.72, "per_class_recall": {"fear": 0.24}}
    table = expected.compare_with_reference(yours, reference, classes=["fear", "disgust"]).splitlines()
    assert table[2] == "| accuracy | 50.0 | 80.0 |"
    assert table[3] == "| mean class accuracy | n/a | 70.0 |"
    assert table[5] == "| fear recall | 0.0 | 24.0 |"
    assert table[6] == "| disgust recall | n/a | n/a |"


# ---------------------------------------------------------------------------------------------- regeneration

def fake_report(seed: int, accuracy: float) -> dict:
    recall = {"fear": 0.2 + 0.01 * seed, "disgust": 0.4}
    return {"split": "test", "n": 10, "accuracy": accuracy, "mean_class_accuracy": accuracy - 0.1,
            "macro_f1": accuracy - 0.05, "per_class_recall": recall, "confusion_matrix": [[1]],
            "validation": {"accuracy": accuracy, "mean_class_accuracy": accuracy, "macro_f1": accuracy}}


@pytest.fixture
def finished_runs(tmp_path, monkeypatch):
    """A runs folder shaped like `make demo` + the ablation, and a figures folder, without training."""
    runs, figures = tmp_path / "runs", tmp_path / "figures"
    # The ablation's rows and the method comparison's share runs/synthfer (baseline and hsbs in both).
    rows = dict.fromkeys([*expected.ABLATION_ROWS, *expected.METHOD_ROWS])
    for row_index, row in enumerate(rows):
        for seed in sorted({*expected.ABLATION_SEEDS, *expected.METHOD_SEEDS}):
            run = runs / "synthfer" / row / f"seed{seed}"
            run.mkdir(parents=True)
            (run / "eval.json").write_text(json.dumps(fake_report(seed, 0.70 + 0.01 * row_index + 0.002 * seed)))
            (run / "config.yaml").write_text("{}\n")
    for name in expected.DEMO_RUNS:
        (runs / name).mkdir()
        (runs / name / "eval.json").write_text(json.dumps(fake_report(0, 0.8)))
        (runs / name / "metrics.csv").write_text("epoch,val/accuracy\n1,0.5\n")
    figures.mkdir()
    for name in expected.FIGURES:
        Image.new("RGB", (1600, 400), "white").save(figures / f"{name}.png")
    # The size columns come from each row's recipe; the fake recipes are empty.
    monkeypatch.setattr(expected, "load_config", lambda path: None)
    monkeypatch.setattr(expected, "model_cost", lambda config, measure_speed: {"params_m": 2.8, "gmacs": 0.178})
    return runs, figures


def test_write_reference_derives_the_folder_from_finished_runs(finished_runs, tmp_path):
    runs, figures = finished_runs
    out = tmp_path / "reference"
    files = expected.write_reference(runs, figures, out)
    assert files["demo_hsbs/eval.json"]["source"] == "runs/demo_hsbs/eval.json"
    assert (out / "demo_hsbs" / "metrics.csv").read_text() == (runs / "demo_hsbs" / "metrics.csv").read_text()
    ablation = json.loads((out / "synthfer_ablation.json").read_text())
    hst = expected.ablation_row(ablation["rows"], "+HST")
    assert math.isclose(hst["accuracy_mean"], 0.72 + 0.004)
    assert math.isclose(hst["accuracy_diff"], 0.02)                     # +HST minus baseline, paired by seed
    assert math.isclose(ablation["hsbs_vs_hst"]["accuracy_diff"], -0.01)   # hsbs minus +HST: BSA's share
    assert "| +HST | 5 |" in (out / "synthfer_ablation.md").read_text()
    methods = json.loads((out / "synthfer_methods.json").read_text())
    assert methods["seeds"] == [0, 1, 2] and [row["row"] for row in methods["rows"]] == list(expected.METHOD_ROWS)
    phanet = expected.ablation_row(methods["rows"], "phanet")   # row index 5 of the fake runs: +0.05 on seeds 0-2
    assert math.isclose(phanet["accuracy_mean"], 0.75 + 0.002) and math.isclose(phanet["accuracy_diff"], 0.05)
    assert "| mfer | 3 |" in (out / "synthfer_methods.md").read_text()
    assert files["synthfer_methods.md"]["source"] == "runs/synthfer/{baseline,hsbs,clcl,phanet,mfer}/seed{0,1,2}"
    with Image.open(out / "figures" / f"{expected.FIGURES[0]}.png") as image:
        assert image.size == (expected.MAX_FIGURE_WIDTH, 250)
    assert json.loads((out / "manifest.json").read_text()) == files


def test_missing_run_is_named_and_nothing_is_written(finished_runs, tmp_path, capsys):
    runs, figures = finished_runs
    shutil.rmtree(runs / "synthfer" / "+BSA" / "seed3")
    out = tmp_path / "reference"
    status = expected.main(["--runs", str(runs), "--figures", str(figures), "--out", str(out)])
    error = capsys.readouterr().err
    assert status == 1 and len(error.strip().splitlines()) == 1
    assert str(runs / "synthfer" / "+BSA" / "seed3" / "eval.json") in error
    assert not out.exists()


def test_regeneration_command_without_runs_fails_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "hsbs_lib.engine.expected", "--runs", str(tmp_path / "none"),
                             "--out", str(tmp_path / "reference")], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "demo_baseline" in result.stderr and not (tmp_path / "reference").exists()


def test_attention_vs_reference_puts_your_score_beside_the_reference_mean():
    summaries = [{"row": "hsbs", "layer1_energy_share_mean": 0.118, "layer1_energy_share_std": 0.008}]
    yours = {"hsbs": {"layer1": {"energy_share": 0.2}}, "chain": {"layer1": {"energy_share": 0.1}}}
    table = expected.attention_vs_reference(yours, summaries).splitlines()
    assert table[0] == "| layer | hsbs: yours | hsbs: reference | chain: yours | chain: reference |"
    assert table[2] == "| layer1 | 0.200 | 0.118 ± 0.008 | 0.100 | n/a |"


def test_files_the_command_did_not_write_are_never_overwritten(finished_runs, tmp_path, capsys):
    runs, figures = finished_runs
    out = tmp_path / "reference"
    (out / "demo_hsbs").mkdir(parents=True)
    (out / "demo_hsbs" / "eval.json").write_text("my own notes")
    status = expected.main(["--runs", str(runs), "--figures", str(figures), "--out", str(out)])
    error = capsys.readouterr().err
    assert status == 1 and "demo_hsbs/eval.json" in error and len(error.strip().splitlines()) == 1
    assert (out / "demo_hsbs" / "eval.json").read_text() == "my own notes"
    assert not (out / "manifest.json").exists()
    # A folder this command wrote is rewritten in place ...
    shutil.rmtree(out)
    expected.write_reference(runs, figures, out)
    expected.write_reference(runs, figures, out)
    assert json.loads((out / "demo_hsbs" / "eval.json").read_text())["accuracy"] == 0.8
    # ... but a file edited since it was written (another size than manifest.json records) is the user's now.
    (out / "demo_hsbs" / "eval.json").write_text("edited")
    with pytest.raises(expected.ReferenceError, match="demo_hsbs/eval.json"):
        expected.write_reference(runs, figures, out)
    assert (out / "demo_hsbs" / "eval.json").read_text() == "edited"


def test_parts_rewrites_some_tables_and_keeps_the_others_with_their_recipe(finished_runs, tmp_path, capsys):
    runs, figures = finished_runs
    for row in expected.METHOD_ROWS:          # the methods' runs at another budget than the ablation's
        for seed in expected.METHOD_SEEDS:
            (runs / "synthfer" / row / f"seed{seed}" / "config.yaml").write_text(
                "train: {epochs: 16}\nmodel: {stem: pooled}\ndata: {input_size: 65}\n")
    out = tmp_path / "reference"
    first = expected.write_reference(runs, figures, out)
    assert first["synthfer_methods.json"]["recipe"] == "train.epochs=16, model.stem=pooled, data.input_size=65"
    assert first["synthfer_ablation.json"]["recipe"] == "train.epochs=16, model.stem=pooled, data.input_size=65"
    ablation_before = (out / "synthfer_ablation.json").read_bytes()
    # the ablation's runs are gone from this machine: the methods are rewritten, the ablation kept as it was
    shutil.rmtree(runs / "synthfer" / "+BSA")
    (runs / "synthfer" / "mfer" / "seed1" / "eval.json").write_text(json.dumps(fake_report(1, 0.5)))
    assert expected.main(["--runs", str(runs), "--figures", str(figures), "--out", str(out),
                          "--parts", "demo", "methods"]) == 0
    assert "kept ablation" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert (out / "synthfer_ablation.json").read_bytes() == ablation_before
    assert manifest["synthfer_ablation.json"] == first["synthfer_ablation.json"]
    mfer = expected.ablation_row(json.loads((out / "synthfer_methods.json").read_text())["rows"], "mfer")
    assert mfer["accuracy_mean"] == pytest.approx((0.76 + 0.5 + 0.764) / 3)     # seed 1's new result is in
    assert manifest["synthfer_methods.json"]["bytes"] == (out / "synthfer_methods.json").stat().st_size
    # a part that cannot be kept (never written here) and an unknown part are refused in one line
    fresh = tmp_path / "fresh"
    for parts in (["methods"], ["demo", "tables"]):
        assert expected.main(["--runs", str(runs), "--figures", str(figures), "--out", str(fresh),
                              "--parts", *parts]) == 1
        error = capsys.readouterr().err
        assert len(error.strip().splitlines()) == 1 and ("cannot keep" in error or "--parts expects" in error)
    assert not fresh.exists()


def test_the_control_part_is_written_only_when_asked_and_then_kept(finished_runs, tmp_path, capsys):
    runs, figures = finished_runs
    for row_index, row in enumerate(expected.CONTROL_ROWS):
        for seed in expected.CONTROL_SEEDS:
            run = runs / "control_hst" / row / f"seed{seed}"
            run.mkdir(parents=True)
            (run / "eval.json").write_text(json.dumps(fake_report(seed, 0.70 + 0.01 * row_index + 0.002 * seed)))
            (run / "config.yaml").write_text("{}\n")
    out = tmp_path / "reference"
    files = expected.write_reference(runs, figures, out)         # the default parts: no control
    assert not any(name.startswith("synthfer_control") for name in files)
    files = expected.write_reference(runs, figures, out, parts=["control"])
    control = json.loads((out / "synthfer_control.json").read_text())
    assert control["seeds"] == list(range(8)) and [r["row"] for r in control["rows"]] == list(expected.CONTROL_ROWS)
    # the GT mask row (index 2) minus the layer4-teacher row (index 1), paired by seed
    assert math.isclose(control["mask_vs_layer4"]["accuracy_diff"], 0.01)
    assert math.isclose(expected.ablation_row(control["rows"], "HST layer3 (GT mask)")["accuracy_diff"], 0.02)
    assert files["synthfer_control.md"]["source"].startswith("runs/control_hst/{baseline,HST layer3")
    assert expected.ablation_row(json.loads((out / "synthfer_ablation.json").read_text())["rows"], "+HST")
    # a later default rewrite keeps the control part, and says so
    assert expected.main(["--runs", str(runs), "--figures", str(figures), "--out", str(out)]) == 0
    assert "kept control" in capsys.readouterr().out
    assert "synthfer_control.json" in json.loads((out / "manifest.json").read_text())
    # a notebook quote can name it by its short name
    assert quotes.resolve_quote("control:HST layer3 (GT mask).accuracy_diff", out) == pytest.approx(0.02)
