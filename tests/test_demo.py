"""`hsbs demo` (what `make demo` runs): trains both demo runs, tabulates them, draws the comparison figures."""
import pytest

from hsbs_lib.demo import comparison_table

TINY = ["data.n_train=96", "data.n_val=48", "data.n_test=48", "data.input_size=48", "train.epochs=1",
        "train.batch_size=32", "train.device=cpu", "train.progress=false", "train.threads=1"]


def _report(accuracy, fear=None):
    recall = {"fear": fear} if fear is not None else {}
    return {"accuracy": accuracy, "mean_class_accuracy": accuracy / 2, "macro_f1": 0.25, "per_class_recall": recall,
            "epoch": 3}


def test_comparison_table_rows_and_missing_classes():
    table = comparison_table({"a": _report(0.8123, fear=0.5), "b": _report(0.5)}).splitlines()
    assert table[0] == "| model | accuracy | mean class acc. | macro-F1 | fear recall | disgust recall | epoch |"
    assert table[2] == "| a | 81.2 | 40.6 | 25.0 | 50.0 | - | 3 |"
    assert table[3] == "| b | 50.0 | 25.0 | 25.0 | - | - | 3 |"


@pytest.mark.slow
def test_demo_trains_compares_draws_and_then_reuses(tmp_path, capsys):
    from hsbs_lib.cli import main

    runs, figures = tmp_path / "runs", tmp_path / "figures"
    assert main(["demo", "--runs", str(runs), "--out", str(figures), "--formats", "png", *TINY]) == 0
    printed = capsys.readouterr().out
    assert "| demo_baseline |" in printed and "| demo_hsbs |" in printed
    for name in ("demo_baseline", "demo_hsbs"):
        assert (runs / name / "eval.json").is_file() and (runs / name / "best.pt").is_file()
    assert (figures / "demo_comparison.md").read_text().count("| demo_") == 2
    assert (figures / "demo_hsbs_vs_demo_baseline_confusion.png").is_file()
    assert (figures / "demo_hsbs_attention.png").is_file() and (figures / "demo_hsbs_bsa_similarity.png").is_file()
    assert not list(figures.glob("*.pdf"))

    # A second call with the same recipe reuses the finished runs instead of training them again.
    stamps = {name: (runs / name / "best.pt").stat().st_mtime_ns for name in ("demo_baseline", "demo_hsbs")}
    assert main(["demo", "--runs", str(runs), "--no-figures", *TINY]) == 0
    assert stamps == {name: (runs / name / "best.pt").stat().st_mtime_ns for name in stamps}


def test_demo_rejects_malformed_overrides(tmp_path, capsys):
    from hsbs_lib.cli import main

    assert main(["demo", "--runs", str(tmp_path), "train.epochs"]) == 1
    assert "key=value" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_demo_finds_its_recipes_from_any_folder(tmp_path, monkeypatch):
    from hsbs_lib import demo

    started = []
    monkeypatch.setattr(demo, "fit", lambda config, resume=None: started.append(config))
    monkeypatch.chdir(tmp_path)                      # a user's own folder, no configs/ in it
    demo.ensure_demo_runs("runs")
    assert [config.model.name for config in started] == ["baseline", "hsbs"]
    assert [config.out for config in started] == ["runs/demo_baseline", "runs/demo_hsbs"]
