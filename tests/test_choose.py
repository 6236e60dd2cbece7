"""`hsbs choose` ranks a comparison's rows on the validation split only, writes the plan that confirms the
best row on fresh seeds, and `hsbs compare` refuses to confirm it on the seeds that chose it."""
import json
from pathlib import Path

import pytest
import yaml

from hsbs_lib.cli import main
from hsbs_lib.config import save_config
from hsbs_lib.engine import compare
from hsbs_lib.engine.choose import rank_rows
from hsbs_lib.engine.compare import load_plan, load_plan_config, run_dir, run_overrides

TINY = ["data.n_train=96", "data.n_test=48", "train.epochs=1", "train.progress=false"]
# Validation mean class accuracy per (row, seed). 'late' is best on validation, 'ema' best on the test split:
# a choice made on the test split would pick 'ema'.
VALIDATION = {"baseline": [0.70, 0.72, 0.71], "late": [0.76, 0.75, 0.77], "ema": [0.72, 0.73, 0.71],
              "sad": [0.69, 0.70, 0.72]}
TEST = {"baseline": 0.70, "late": 0.60, "ema": 0.95, "sad": 0.70}


def write_run(plan, row: str, seed: int, validation: float | None, test: float) -> Path:
    """A finished run as hsbs compare leaves it: the recipe's config.yaml and an eval.json."""
    out = run_dir(plan, row, seed)
    out.mkdir(parents=True, exist_ok=True)
    save_config(load_plan_config(plan, run_overrides(plan, row, seed)), out / "config.yaml")
    report = {"accuracy": test, "mean_class_accuracy": test, "macro_f1": test}
    if validation is not None:
        report["validation"] = {"accuracy": validation, "mean_class_accuracy": validation, "macro_f1": validation}
    (out / "eval.json").write_text(json.dumps(report))
    return out


@pytest.fixture
def variants(tmp_path):
    spec = {"base": "configs/synthfer_baseline.yaml", "out": str(tmp_path / "variants"), "overrides": TINY,
            "reference": "baseline",
            "rows": {"baseline": {"model.name": "baseline"},
                     "late": {"model.name": "hsbs", "model.options.bsa": False,
                              "model.options.hst_start_fraction": 0.5},
                     "ema": {"model.name": "hsbs", "model.options.bsa": False, "model.options.hst_teacher": "ema"},
                     "sad": {"model.name": "hsbs", "model.options.bsa": False,
                             "model.options.hst_direction": "upsample"}}}
    path = tmp_path / "variants.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    plan = load_plan(path)
    for row, values in VALIDATION.items():
        for seed, value in enumerate(values):
            write_run(plan, row, seed, value, TEST[row])
    return path


def choose(path, *extra):
    return main(["choose", "--config", str(path), "--seeds", "0", "1", "2", *extra])


def test_the_best_validation_row_is_chosen_and_its_confirmation_plan_written(variants, tmp_path, capsys):
    assert choose(variants) == 0
    folder = tmp_path / "variants" / "choice"
    choice = json.loads((folder / "choice.json").read_text())
    assert choice["chosen"] == "late"               # not 'ema', the best on the test split
    assert choice["candidates"] == 3 and choice["seeds"] == [0, 1, 2]
    assert [entry["row"] for entry in choice["ranking"]] == ["late", "ema", "sad"]
    late = choice["ranking"][0]
    assert late["mean"] == pytest.approx(0.76) and late["diff"] == pytest.approx(0.05)
    assert late["diff_low"] < 0.05 < late["diff_high"]
    text = (folder / "choice.md").read_text()
    assert "**Chosen: 'late'**, the best of 3 candidates" in text and "| 1 | late | 76.0 ± 1.0 | +5.0 [" in text
    confirm = load_plan(folder / "confirm.yaml")
    assert list(confirm.rows) == ["baseline", "late"] and confirm.reference_row() == "baseline"
    assert confirm.rows["late"] == load_plan(variants).rows["late"] and confirm.overrides == TINY
    assert confirm.out == str(tmp_path / "variants") + "_confirm"
    assert confirm.selection == {"plan": str(variants), "seeds": [0, 1, 2], "metric": "validation mean_class_accuracy",
                                 "candidates": 3, "chosen": "late"}
    # the printed command names fresh seeds only
    assert "--seeds 10 11 12 13 14 15 16 17" in capsys.readouterr().out


def test_candidates_and_metric_can_be_narrowed(variants, tmp_path):
    assert choose(variants, "--candidates", "ema", "sad", "--out", str(tmp_path / "two")) == 0
    choice = json.loads((tmp_path / "two" / "choice.json").read_text())
    assert choice["chosen"] == "ema" and choice["candidates"] == 2


def test_confirmation_refuses_the_selection_seeds_and_says_how_its_row_was_chosen(variants, tmp_path, capsys,
                                                                                 monkeypatch):
    assert choose(variants) == 0
    confirm = tmp_path / "variants" / "choice" / "confirm.yaml"
    capsys.readouterr()
    assert main(["compare", "--config", str(confirm), "--seeds", "2", "10", "--no-speed", "--no-diagnostics"]) == 1
    error = capsys.readouterr().err
    assert "seeds [2] chose its row" in error and "--seeds 10 11" in error and len(error.strip().splitlines()) == 1

    plan = load_plan(confirm)
    trained = []

    def fit(config, **_):
        row, seed = Path(config.out).parent.name, config.train.seed
        write_run(plan, row, seed, 0.7, 0.7 + 0.01 * seed * (row == "late"))
        trained.append((row, seed))
    monkeypatch.setattr("hsbs_lib.engine.train.fit", fit)
    assert main(["compare", "--config", str(confirm), "--seeds", "10", "11", "--no-speed", "--no-diagnostics"]) == 0
    assert sorted(trained) == [("baseline", 10), ("baseline", 11), ("late", 10), ("late", 11)]
    table = (Path(plan.out) / "comparison.md").read_text()
    assert table.startswith("Confirmation on fresh seeds: 'late' was chosen among 3 candidate rows")
    assert "one comparison, not 3" in table


def test_a_missing_run_or_one_without_validation_scores_is_refused_in_one_line(variants, tmp_path, capsys):
    plan = load_plan(variants)
    eval_file = run_dir(plan, "sad", 1) / "eval.json"
    eval_file.unlink()
    assert choose(variants) == 1
    error = capsys.readouterr().err.strip()
    assert "1 missing" in error and "sad/seed1" in error and "hsbs compare --config" in error
    assert len(error.splitlines()) == 1
    write_run(plan, "sad", 1, None, 0.7)
    assert choose(variants) == 1
    error = capsys.readouterr().err.strip()
    assert str(eval_file) in error and "validation split only" in error
    # a run of another recipe is not counted as a candidate's
    write_run(plan, "sad", 1, 0.7, 0.7)
    (run_dir(plan, "sad", 1) / "config.yaml").write_text(
        (run_dir(plan, "sad", 1) / "config.yaml").read_text().replace("lr: 0.001", "lr: 0.5"))
    assert choose(variants) == 1 and "of another recipe" in capsys.readouterr().err
    assert not (tmp_path / "variants" / "choice").exists()


@pytest.mark.parametrize("extra, said", [
    (["--candidates", "nope"], "unknown candidate rows ['nope']"),
    (["--candidates", "baseline"], "no candidate rows besides the reference"),
    (["--reference", "nope"], "unknown reference row 'nope'"),
    (["--confirm-seeds", "1"], "--confirm-seeds: at least 2"),
    (["train.lr=0.1"], "takes no overrides"),
])
def test_bad_choices_are_refused_in_one_line(variants, capsys, extra, said):
    assert choose(variants, *extra) == 1
    error = capsys.readouterr().err.strip()
    assert said in error and len(error.splitlines()) == 1


def test_choose_never_replaces_a_file_it_did_not_write(variants, tmp_path, capsys):
    folder = tmp_path / "variants" / "choice"
    folder.mkdir(parents=True)
    (folder / "confirm.yaml").write_text("mine\n")
    assert choose(variants) == 1
    assert (folder / "confirm.yaml").read_text() == "mine\n" and "confirm.yaml" in capsys.readouterr().err
    assert choose(variants, "--force") == 0 and "selection:" in (folder / "confirm.yaml").read_text()
    assert choose(variants) == 0           # its own files it may rewrite


def test_a_selection_block_is_checked_when_the_plan_is_read(tmp_path):
    spec = {"base": "configs/synthfer_baseline.yaml", "rows": {"baseline": {"model.name": "baseline"}},
            "selection": {"plan": "x.yaml", "seeds": [0, 1], "metric": "validation accuracy", "candidates": 2,
                          "chosen": "hsbs"}}
    path = tmp_path / "confirm.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ValueError, match="selection.chosen 'hsbs' is not among the rows"):
        load_plan(path)
    spec["selection"].update(chosen="baseline", seeds="0 1")
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ValueError, match="selection must be"):
        load_plan(path)


def test_ranking_keeps_the_plan_order_on_a_tie_and_one_seed_has_no_interval():
    ranked = rank_rows({"baseline": [0.5], "a": [0.6], "b": [0.6]}, "baseline")
    assert [entry["row"] for entry in ranked] == ["a", "b"]
    assert ranked[0]["diff_low"] is None and ranked[0]["verdict"] == "no difference"
    assert compare.fresh_seeds([10, 12], 3) == [11, 13, 14]
