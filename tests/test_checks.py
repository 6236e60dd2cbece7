"""The dataset check: counts per split and class, every bad entry, and the `hsbs check` command."""
from __future__ import annotations

from pathlib import Path

import fakes
from hsbs_lib.cli import main
from hsbs_lib.data.checks import check_dataset
from hsbs_lib.data.labels import CANONICAL_7


def class_counts(expected: dict[str, str], classes=CANONICAL_7) -> list[int]:
    return [sum(c == name for c in expected.values()) for name in classes]


def test_check_lists_index_and_decode_problems(tmp_path):
    copy = fakes.make_rafdb_basic(tmp_path, broken=True)
    result = check_dataset("rafdb", tmp_path)
    assert list(result.splits) == ["train", "test"] and not result.ok
    train = result.splits["train"]
    assert {Path(e.path).name for e in train.bad} == copy.bad_index["train"] | copy.bad_decode["train"]
    reasons = {Path(e.path).name: e.reason for e in train.bad}
    assert "truncated" in reasons["train_00008_aligned.jpg"]
    assert "not a recognised image" in reasons["train_00009_aligned.jpg"]
    usable = {k: c for k, c in copy.expected["train"].items() if k not in copy.bad_decode["train"]}
    assert train.counts == class_counts(usable)
    assert train.sizes == {(12, 12): len(usable)}
    assert result.splits["test"].counts == class_counts(copy.expected["test"])
    text = result.format()
    for name in copy.bad_index["train"] | copy.bad_decode["train"]:
        assert name in text
    assert "5 bad entries (1 malformed line, 4 other;" in text      # 3 + 2 in train, the malformed line once

    index_only = check_dataset("rafdb", tmp_path, decode=False, splits=["train"])
    assert {Path(e.path).name for e in index_only.bad} == copy.bad_index["train"]
    assert index_only.splits["train"].total == len(copy.expected["train"])


def test_check_clean_copy_and_drops(tmp_path):
    copy = fakes.make_affectnet_csv(tmp_path)
    result = check_dataset("affectnet", tmp_path, num_classes=8)
    assert result.ok and list(result.splits) == ["train", "val"]
    assert result.splits["train"].counts == class_counts(copy.expected["train"], result.classes)
    assert result.splits["train"].dropped == {"expression 8 (none)": 1, "expression 10 (non-face)": 1}
    text = result.format()
    assert "no bad entries" in text and "contempt" in text and "expression 10 (non-face): 1" in text


def test_cli_check_broken_copy_returns_1(tmp_path, capsys):
    copy = fakes.make_imagefolder(tmp_path, broken=True)
    assert main(["check", "imagefolder", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    for name in copy.bad_index["train"] | copy.bad_decode["train"]:
        assert name in out
    assert "unknown class name 'confused'" in out and "truncated" in out
    happy_row = next(line for line in out.splitlines() if line.startswith("happiness"))
    assert happy_row.split()[1:] == ["1", "1"]     # train: 2.jpg (truncated.jpg is bad); val: 5.jpg


def test_cli_check_clean_copy_returns_0(tmp_path, capsys):
    copy = fakes.make_sfew(tmp_path)
    assert main(["check", "sfew", str(tmp_path), "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert "no bad entries" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.split()}
    assert rows["happiness"] == ["1"] and rows["sadness"] == ["1"] and rows["total"] == ["2"]
    assert "train" not in rows["class"]


def test_cli_check_options_and_num_classes(tmp_path, capsys):
    fakes.make_ckplus(tmp_path / "ck")
    assert main(["check", "ckplus", str(tmp_path / "ck"), "--num-classes", "8", "--no-decode",
                 "--option", "n_folds=3", "--option", "fold=1", "--split", "test"]) == 0
    out = capsys.readouterr().out
    assert "contempt" in out and "not decoded" in out
    fakes.make_ferplus(tmp_path / "fp")
    assert main(["check", "ferplus", str(tmp_path / "fp"), "--option", "label_mode=soft"]) == 0
    out = capsys.readouterr().out
    assert "majority unknown/NF: 2" in out and "tied majority" not in out


def test_cli_check_wrong_layout_is_one_readable_error(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    assert main(["check", "rafdb", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "expected EmoLabel/list_patition_label.txt under" in err and "photos/" in err
    assert "Traceback" not in err
