"""`hsbs compare` trains every row and seed once, tabulates mean and std, and reuses finished runs."""
import csv
import json
import math
from pathlib import Path

import pytest
import yaml

from hsbs_lib.config import save_config
from hsbs_lib.cli import main
from hsbs_lib.engine import compare
from hsbs_lib.engine.run_folder import resumable_run_of

# Known per-seed results: the table bookkeeping and the statistics are checked against hand-computed
# numbers, without training (the engine itself is tested in test_engine.py and test_splits.py).
ACCURACY = {("baseline", 0): 0.80, ("baseline", 1): 0.82, ("baseline", 2): 0.81,
            ("+HST", 0): 0.83, ("+HST", 1): 0.84, ("+HST", 2): 0.82}
TINY = ["data.n_train=96", "data.n_test=48", "train.epochs=1", "train.progress=false"]


@pytest.fixture
def plan_file(tmp_path):
    spec = {"base": "configs/synthfer_baseline.yaml", "out": str(tmp_path / "cmp"), "overrides": TINY,
            "rows": {"baseline": {"model.name": "baseline"},
                     "+HST": {"model.name": "hsbs", "model.options.bsa": False}}}
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture
def fake_fit(monkeypatch):
    """Stands in for training: writes the run's config.yaml and an eval.json with known numbers."""
    trained = []

    def fit(config, **_):
        out = Path(config.out)
        row, seed = out.parent.name, config.train.seed
        out.mkdir(parents=True, exist_ok=True)
        save_config(config, out / "config.yaml")
        accuracy = ACCURACY[(row, seed)]
        report = {"accuracy": accuracy, "mean_class_accuracy": accuracy - 0.1, "macro_f1": accuracy - 0.05,
                  "per_class_recall": {"fear": 0.25 * (seed + 1), "disgust": 0.5, "happiness": 0.9},
                  "validation": {"accuracy": accuracy - 0.02, "mean_class_accuracy": accuracy - 0.12,
                                 "macro_f1": accuracy - 0.07}}
        (out / "eval.json").write_text(json.dumps(report))
        trained.append((row, seed))

    monkeypatch.setattr("hsbs_lib.engine.train.fit", fit)
    return trained


def test_compare_writes_tables_and_reuses_finished_runs(plan_file, tmp_path, capsys, monkeypatch, fake_fit):
    assert main(["compare", "--config", str(plan_file), "--seeds", "0", "1", "2", "--no-speed", "--no-diagnostics"]) == 0
    assert sorted(fake_fit) == sorted(ACCURACY)
    out = tmp_path / "cmp"
    rows = list(csv.DictReader((out / "comparison.csv").open()))
    assert [r["row"] for r in rows] == ["baseline", "+HST"]
    baseline, hst = rows
    assert baseline["seeds"] == "3" and float(baseline["accuracy_mean"]) == pytest.approx(0.81)
    assert float(baseline["accuracy_std"]) == pytest.approx(0.01)
    assert float(baseline["recall_fear_mean"]) == pytest.approx(0.5)
    assert float(baseline["params_m"]) > 1 and float(baseline["gmacs"]) > 0
    # paired by seed: differences 0.03, 0.02, 0.01 -> mean 0.02, sd 0.01, t(0.975, 2) = 4.303
    half = 4.302653 * 0.01 / math.sqrt(3)
    assert float(hst["accuracy_diff"]) == pytest.approx(0.02)
    assert float(hst["accuracy_diff_low"]) == pytest.approx(0.02 - half, abs=1e-6)
    assert float(hst["accuracy_diff_high"]) == pytest.approx(0.02 + half, abs=1e-6)
    assert hst["accuracy_verdict"] == "no difference"          # the interval contains 0
    assert float(hst["accuracy_p"]) == pytest.approx(0.0742, abs=1e-3)
    table = (out / "comparison.md").read_text()
    assert "| +HST | 3 |" in table and "±" in table
    assert table.splitlines()[0].startswith("| row | seeds | accuracy | mean class acc. | macro-F1 | fear recall |")
    assert "Difference to baseline, paired by seed" in table
    assert "+2.0 [-0.5, +4.5] (p=0.07): no difference" in table
    # the validation split, where choices are made, has its own table with the paired interval
    assert "Validation split" in table and "| +HST | 3 | 81.0 ± 1.0; +2.0 [-0.5, +4.5] |" in table
    assert float(hst["val_accuracy_diff"]) == pytest.approx(0.02)

    # A second call trains nothing: every run is finished with the same recipe.
    fake_fit.clear()
    capsys.readouterr()
    assert main(["compare", "--config", str(plan_file), "--seeds", "0", "1", "2", "--no-speed", "--no-diagnostics"]) == 0
    assert capsys.readouterr().out.count("[compare] reusing") == 6 and not fake_fit

    # A changed recipe is not silently reused.
    assert main(["compare", "--config", str(plan_file), "train.lr=0.01", "--seeds", "0", "--no-speed",
                 "--rows", "baseline", "--no-diagnostics"]) == 0
    assert fake_fit == [("baseline", 0)]


def test_paired_difference_statistics():
    clear = compare.paired_difference([0.90, 0.91, 0.92, 0.93], [0.80, 0.80, 0.81, 0.83])
    assert clear.verdict == "higher" and clear.low > 0 and clear.p_value < 0.01
    worse = compare.paired_difference([0.70, 0.71, 0.72], [0.80, 0.80, 0.82])
    assert worse.verdict == "lower" and worse.high < 0
    noisy = compare.paired_difference([0.80, 0.90, 0.70], [0.81, 0.79, 0.80])
    assert noisy.verdict == "no difference" and noisy.low < 0 < noisy.high
    single = compare.paired_difference([0.9], [0.8])
    assert single.verdict == "no difference" and math.isnan(single.low)     # one seed: no interval, no claim
    with pytest.raises(ValueError, match="same seeds"):
        compare.paired_difference([0.9, 0.8], [0.8])


def test_diagnostics_are_summarised_over_seeds():
    def report(seed, share, same):
        return {"accuracy": 0.8, "mean_class_accuracy": 0.7, "macro_f1": 0.7, "per_class_recall": {},
                "diagnostics": {"attention": {"layer1": {"energy_share": share, "pointing_hit_rate": 0.5,
                                                         "outer_ring_share": 0.1, "centre_pointing": 0.64}},
                                "bsa": {"row_entropy": 3.0, "max_column_mass": 0.02, "same_to_different": same}}}
    results = {"baseline": {0: report(0, 0.10, 1.0), 1: report(1, 0.12, 1.0)},
               "hsbs": {0: report(0, 0.20, 4.0), 1: report(1, 0.24, 6.0)}}
    summaries = compare.summarise(results, reference="baseline")
    assert summaries[1]["layer1_energy_share_mean"] == pytest.approx(0.22)
    assert summaries[1]["bsa_same_to_different_mean"] == pytest.approx(5.0)
    table = compare.format_diagnostics_table(summaries)
    assert "layer1 energy / pointing / ring" in table and "| hsbs | 0.220 ± 0.028 / 0.500 ± 0.000 / 0.100 ± 0.000 |" in table
    # paired by seed: differences 0.10 and 0.12 -> mean 0.11, half-width t(0.975, 1) * 0.01414 / sqrt(2) = 0.127
    assert summaries[1]["layer1_energy_share_diff"] == pytest.approx(0.11)
    assert "| hsbs | +0.110 [-0.017, +0.237] / " in table
    assert "| hsbs | 3.000 ± 0.000 | 0.020 ± 0.000 | 5.000 ± 1.414 |" in table
    # the centre baseline is a property of the masks: stated once, never differenced as if a run had it
    assert "always peaks at the image centre wins the pointing game on 0.640" in table
    assert summaries[1]["centre_pointing_mean"] == pytest.approx(0.64) and "centre_pointing_diff" not in summaries[1]


def test_minority_recall_columns_only_when_every_row_has_them():
    row = {"row": "a", "seeds": 2, "params_m": 11.2, "gmacs": 0.148,
           **{f"{m}_{k}": 0.5 for m in compare.METRICS for k in ("mean", "std")}}
    with_recall = {**row, "recall_fear_mean": 0.25, "recall_fear_std": 0.0}
    assert "fear recall" in compare.format_markdown([with_recall]).splitlines()[0]
    assert "| a | 2 | 50.0 ± 50.0 | 50.0 ± 50.0 | 50.0 ± 50.0 | 25.0 ± 0.0 | 11.20 |" in compare.format_markdown([with_recall])
    # a dataset without fear (or a seed whose test split lacks it) gets no fear column, not a fake number
    assert "fear recall" not in compare.format_markdown([with_recall, row])


def test_overrides_may_follow_the_seeds():
    assert compare.split_seeds(["0", "1", "2", "train.epochs=6", "data.n_train=2000"]) == (
        [0, 1, 2], ["train.epochs=6", "data.n_train=2000"])
    with pytest.raises(ValueError, match="integers, got 'one'"):
        compare.split_seeds(["one"])
    with pytest.raises(ValueError, match="at least one"):
        compare.split_seeds(["train.epochs=1"])


def test_plan_errors_are_readable(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rows: {a: {model.name: baseline}}\n")
    with pytest.raises(ValueError, match="missing keys"):
        compare.load_plan(bad)
    assert main(["compare", "--config", str(tmp_path / "absent.yaml")]) == 1


def test_bench_prints_cost_ratios_to_the_baseline(capsys):
    assert main(["bench", "--sections", "models", "--models", "hsbs", "--steps", "1", "--batch-size", "8",
                 "--input-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "| baseline |" in out and "| hsbs |" in out and "1.00x" in out


def test_any_row_can_be_the_reference(plan_file, tmp_path, capsys, fake_fit):
    assert main(["compare", "--config", str(plan_file), "--seeds", "0", "1", "2", "--no-speed", "--no-diagnostics",
                 "--reference", "+HST"]) == 0
    rows = {row["row"]: row for row in csv.DictReader((tmp_path / "cmp" / "comparison.csv").open())}
    assert float(rows["baseline"]["accuracy_diff"]) == pytest.approx(-0.02) and rows["+HST"]["accuracy_diff"] == ""
    assert "Difference to +HST" in capsys.readouterr().out
    assert main(["compare", "--config", str(plan_file), "--seeds", "0", "--no-speed", "--reference", "nope"]) == 1


def test_a_plan_may_compose_its_base_from_data_and_method(tmp_path):
    """``base: {data, method}`` loads like ``--data/--method``; the shipped FER2013 plan has the plain
    reference trainer as its reference row, and the rows differ from the recipe only where they say."""
    plan = compare.load_plan(Path(__file__).resolve().parents[1] / "configs" / "compare_fer2013.yaml")
    assert plan.base == {"data": "fer2013", "method": "baseline"} and plan.reference_row() == "reference"
    configs = {row: compare.load_plan_config(plan, overrides) for row, overrides in plan.rows.items()}
    assert configs["reference"].train.trainer == "reference" and configs["hsbs"].model.name == "hsbs"
    assert {config.data.input_size for config in configs.values()} == {48}
    assert len({(config.train.lr, config.train.epochs, config.data.augment) for config in configs.values()}) == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: {method: hsbs}\nrows: {a: {model.name: baseline}}\n")
    with pytest.raises(ValueError, match="mapping with data"):
        compare.load_plan(bad)


def test_one_seed_shows_no_spread():
    """A single seed has no standard deviation: the tables show its value alone, not "± 0.0"."""
    summaries = compare.summarise({"baseline": {0: {"accuracy": 0.8, "mean_class_accuracy": 0.7, "macro_f1": 0.6}}},
                                  reference="baseline")
    for summary in summaries:
        summary.update(params_m=1.0, gmacs=0.1)
    row = compare.format_markdown(summaries).splitlines()[2]
    assert row.startswith("| baseline | 1 | 80.0 | 70.0 | 60.0 |") and "±" not in row


def test_a_published_block_prints_the_papers_numbers_marked_as_quoted(plan_file, tmp_path, capsys, fake_fit):
    spec = yaml.safe_load(plan_file.read_text())
    spec["published"] = {"datasets": ["rafdb"], "methods": ["clcl", "mfer", "hsbs"]}
    plan_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    assert main(["compare", "--config", str(plan_file), "--seeds", "0", "--no-speed", "--no-diagnostics"]) == 0
    printed = capsys.readouterr().out
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    for text in (printed, table):
        block = text[text.index("published: quoted from the papers, NOT measured here"):].split("\n\n")[1]
        lines = block.splitlines()
        assert lines[0] == "| method | dataset | accuracy (quoted) | backbone | pretraining | source |"
        assert lines[2].startswith("| clcl | rafdb | 92.21 | ResNet-18 |")
        assert lines[3].startswith("| mfer | rafdb | 92.08 | ConvNeXt-Base | MS-Celeb-1M |")
        assert lines[4] == "| hsbs | rafdb | none published | | | |"
        assert text.index("| baseline | 1 |") < text.index("published: quoted")   # beside the measured rows
    # The measured rows alone go to the CSV.
    assert [row["row"] for row in csv.DictReader((tmp_path / "cmp" / "comparison.csv").open())] == ["baseline", "+HST"]


def test_published_numbers_are_the_papers_and_are_in_the_docs():
    from hsbs_lib.engine.published import PUBLISHED_RESULTS, published_results

    quoted = {(r.method, r.dataset): r.accuracy for r in PUBLISHED_RESULTS}
    assert quoted[("clcl", "rafdb")] == 92.21 and quoted[("clcl", "affectnet")] == 65.29
    assert quoted[("mfer", "ferplus")] == 91.09 and quoted[("mfer", "affectnet8")] == 63.15
    assert quoted[("phanet", "kdef")] == 88.5 and quoted[("phanet", "sfew")] == 31.25
    assert not [r for r in PUBLISHED_RESULTS if r.method == "hsbs"]
    # AffectNet-7 also shows a paper that says only "AffectNet".
    assert {(r.method, r.dataset) for r in published_results(["affectnet7"])} == {
        ("clcl", "affectnet"), ("mfer", "affectnet7"), ("phanet", "affectnet")}
    docs = (Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md").read_text()
    assert all(f"{r.accuracy:.2f}" in docs for r in PUBLISHED_RESULTS)


def test_published_block_errors_are_readable(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: configs/synthfer_baseline.yaml\nrows: {a: {model.name: baseline}}\n"
                   "published: {datasets: [rafdb], methods: [vgg]}\n")
    with pytest.raises(ValueError, match=r"published.methods \['vgg'\] unknown"):
        compare.load_plan(bad)
    bad.write_text("base: configs/synthfer_baseline.yaml\nrows: {a: {model.name: baseline}}\npublished: {method: x}\n")
    with pytest.raises(ValueError, match="published must be a mapping with datasets"):
        compare.load_plan(bad)
    shorthand = tmp_path / "short.yaml"
    shorthand.write_text("base: configs/synthfer_baseline.yaml\nrows: {a: {model.name: baseline}}\npublished: sfew\n")
    assert compare.load_plan(shorthand).published == {"datasets": ["sfew"], "methods": None}


def test_curves_show_whether_each_row_levelled_off(tmp_path):
    """comparison.md ends with training accuracy at half, three quarters and the end of the schedule, and
    the gain over the last quarter; plot_curves_by_row draws every seed and each row's mean."""
    from hsbs_lib.engine.compare import last_epochs_table
    from hsbs_lib.viz.curves import plot_curves_by_row

    def metrics(path, accuracies):
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = "".join(f"{epoch},{value},{value - 0.1}\n" for epoch, value in enumerate(accuracies, 1))
        path.write_text("epoch,train/accuracy,val/mean_class_accuracy\n" + rows)
        return path

    flat = [metrics(tmp_path / f"flat{seed}.csv", [0.5, 0.8, 0.9, 0.95, 0.99, 1.0, 1.0, 1.0]) for seed in range(2)]
    rising = [metrics(tmp_path / "rising.csv", [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])]
    table = last_epochs_table({"baseline": flat, "phanet": rising}).splitlines()
    assert table[0].startswith("| row | seeds | train/accuracy: epoch 50 % | epoch 75 % | epoch 100 % |")
    # epochs 4, 6 and 8 of 8; the gain is epoch 8 minus epoch 6
    assert table[2] == "| baseline | 2 | 95.0 | 100.0 | 100.0 | +0.0 |"
    assert table[3] == "| phanet | 1 | 50.0 | 70.0 | 90.0 | +20.0 |"

    summaries = compare.summarise({"baseline": {0: {"accuracy": 0.8, "mean_class_accuracy": 0.7, "macro_f1": 0.6}}},
                                  reference="baseline")
    for summary in summaries:
        summary.update(params_m=1.0, gmacs=0.1)
    out = tmp_path / "cmp"
    compare.write_tables(summaries, out, "baseline", metrics_by_row={"baseline": flat, "phanet": rising,
                                                                      "mfer": [tmp_path / "missing.csv"]})
    text = (out / "comparison.md").read_text()
    assert "| phanet | 1 | 50.0 | 70.0 | 90.0 | +20.0 |" in text and "| mfer |" not in text.split("last quarter")[-1]
    # without metrics the tables stand alone
    compare.write_tables(summaries, tmp_path / "bare", "baseline")
    assert "last quarter" not in (tmp_path / "bare" / "comparison.md").read_text()
    # the figure: one thick mean line per row (with its seed count in the legend) over a thin line per seed
    figure = plot_curves_by_row({"baseline": flat, "phanet": rising})
    lines = figure.axes[0].get_lines()
    assert len(lines) == 3 + 2 and [line.get_label() for line in lines if line.get_linewidth() == 2.0] == [
        "baseline (2 seeds)", "phanet (1 seeds)"]
    assert list(lines[-1].get_ydata()) == [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


def test_every_shipped_plan_loads_and_each_row_composes_a_valid_recipe():
    """A typo in a plan's row (a key that does not exist, a value of the wrong type) fails here, not after
    hours of its earlier rows' training."""
    from hsbs_lib.config import validate_config
    from hsbs_lib.models.registry import model_option_defaults
    configs = Path(__file__).resolve().parents[1] / "configs"
    plans = [path for path in sorted(configs.glob("*.yaml")) if "rows" in (yaml.safe_load(path.read_text()) or {})]
    assert {"compare_synthfer.yaml", "ablation_hsbs.yaml", "ablation_fer2013.yaml", "control_hst.yaml",
            "variants_hsbs.yaml"} <= {path.name for path in plans}
    for path in plans:
        plan = compare.load_plan(path)
        for row in plan.rows:
            config = compare.load_plan_config(plan, compare.run_overrides(plan, row, 0))
            validate_config(config)
            assert config.out == str(compare.run_dir(plan, row, 0)), (path.name, row)
            # model options are checked when the model is built, so here by name against the model's own
            unknown = set(config.model.options) - set(model_option_defaults(config.model.name))
            assert not unknown, f"{path.name}, row '{row}': {config.model.name} has no options {sorted(unknown)}"


def test_an_interrupted_run_is_resumed_not_trained_again(tmp_path, capsys):
    """A comparison stopped mid-run (here after epoch 1 of 2, as a session's end would stop it) continues
    from the run's last.pt on the next call: epoch 1 is kept, not trained again."""
    tiny = ["train.progress=false", "train.threads=1", "data.n_train=28", "data.n_val=14", "data.n_test=14",
            "data.input_size=33", "model.backbone_width=8", "train.batch_size=14", "train.epochs=2"]
    spec = {"base": "configs/synthfer_baseline.yaml", "out": str(tmp_path / "cmp"), "overrides": tiny,
            "rows": {"baseline": {"model.name": "baseline"}}}
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump(spec, sort_keys=False))
    command = ["compare", "--config", str(plan), "--seeds", "0", "--no-speed", "--no-diagnostics"]
    run = tmp_path / "cmp" / "baseline" / "seed0"
    # the first sitting saves epoch 1 and stops: no report yet, and no tables
    assert main([*command, "train.stop_after_epoch=1"]) == 0
    assert "stopped before its last epoch" in capsys.readouterr().out
    assert (run / "last.pt").is_file() and not (run / "eval.json").exists()
    assert not (tmp_path / "cmp" / "comparison.md").exists()
    first_epoch = (run / "metrics.csv").read_text().splitlines()[1]
    capsys.readouterr()
    assert main(command) == 0
    assert "[compare] resuming baseline seed 0" in capsys.readouterr().out
    lines = (run / "metrics.csv").read_text().splitlines()
    assert len(lines) == 3 and lines[1] == first_epoch          # epoch 1 kept, epoch 2 added
    assert json.loads((run / "eval.json").read_text())["epoch"] in (1, 2)
    # a run of another recipe in the folder is not resumed (it is trained again, as before)
    assert not resumable_run_of(run, compare.load_plan_config(compare.load_plan(plan), ["train.lr=0.5"]))
