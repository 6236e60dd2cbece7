"""`hsbs compare` trains every row and seed once, tabulates mean and std, and reuses finished runs."""
import csv

import pytest
import yaml

from hsbs_lib.cli import main
from hsbs_lib.engine import compare

# balanced classes, so that the 48 test faces hold fear and disgust and their recall is tabulated
TINY = ["data.n_train=96", "data.n_test=48", "data.synth_balanced=true", "train.epochs=1", "train.batch_size=32", "train.progress=false",
        "train.record_intensity=false"]


@pytest.fixture
def plan_file(tmp_path):
    spec = {"base": "configs/synthfer_baseline.yaml", "out": str(tmp_path / "cmp"), "overrides": TINY,
            "rows": {"baseline": {"model.name": "baseline"},
                     "+HST": {"model.name": "hsbs", "model.options.bsa": False}}}
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_compare_writes_tables_and_reuses_finished_runs(plan_file, tmp_path, capsys, monkeypatch):
    assert main(["compare", "--config", str(plan_file), "--seeds", "0", "1", "--no-speed"]) == 0
    out = tmp_path / "cmp"
    rows = list(csv.DictReader((out / "comparison.csv").open()))
    assert [r["row"] for r in rows] == ["baseline", "+HST"]
    for row in rows:
        assert row["seeds"] == "2"
        assert 0.0 <= float(row["accuracy_mean"]) <= 1.0 and float(row["accuracy_std"]) >= 0.0
        assert float(row["params_m"]) > 10 and float(row["gmacs"]) > 0
        # the minority classes are reported on their own, mean and std over seeds like the rest
        assert 0.0 <= float(row["recall_fear_mean"]) <= 1.0 and float(row["recall_disgust_std"]) >= 0.0
    table = (out / "comparison.md").read_text()
    assert "| +HST | 2 |" in table and "±" in table
    assert table.splitlines()[0].startswith("| row | seeds | accuracy | mean class acc. | macro-F1 | fear recall |")
    for row in ("baseline", "+HST"):
        for seed in (0, 1):
            assert (out / row / f"seed{seed}" / "eval.json").is_file()

    # A second call trains nothing: every run is finished with the same recipe.
    def no_training(config, **_):
        raise AssertionError(f"retrained {config.out}")

    monkeypatch.setattr("hsbs_lib.engine.train.fit", no_training)
    capsys.readouterr()
    assert main(["compare", "--config", str(plan_file), "--seeds", "0", "1", "--no-speed"]) == 0
    assert capsys.readouterr().out.count("[compare] reusing") == 4

    # A changed recipe is not silently reused.
    with pytest.raises(AssertionError, match="retrained"):
        main(["compare", "--config", str(plan_file), "train.lr=0.01", "--seeds", "0", "--no-speed",
              "--rows", "baseline"])


def test_minority_recall_columns_only_when_every_row_has_them():
    row = {"row": "a", "seeds": 1, "params_m": 11.2, "gmacs": 0.148,
           **{f"{m}_{k}": 0.5 for m in compare.METRICS for k in ("mean", "std")}}
    with_recall = {**row, "recall_fear_mean": 0.25, "recall_fear_std": 0.0}
    assert "fear recall" in compare.format_markdown([with_recall]).splitlines()[0]
    assert "| a | 1 | 50.0 ± 50.0 | 50.0 ± 50.0 | 50.0 ± 50.0 | 25.0 ± 0.0 | 11.20 |" in compare.format_markdown([with_recall])
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
    assert main(["bench", "--sections", "models", "--models", "hsbs", "--steps", "1", "--batch-size", "8"]) == 0
    out = capsys.readouterr().out
    assert "| baseline |" in out and "| hsbs |" in out and "1.00x" in out
