"""Bad input around the data and the cache, as a careless or hostile user would give it (issue 17, items 1-5
and ``predict`` on missing input).

One table of cases, ``CASES``: each builds its input in a temporary folder, runs the ``hsbs`` command (or
the library call) and states the expected outcome: the exit status, what the output must say, whether the
error fits on one line. Every command runs with a strict UTF-8 stdout and stderr, the way a terminal with
a UTF-8 locale gives them, so an unprintable file name shows up as a crash. ``pytest -v`` counts the cases
tried and passed.
"""
from __future__ import annotations

import csv
import errno
import functools
import io
import os
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

import fakes
from hsbs_lib.cli import main
from hsbs_lib.data.datasets import load_dataset
from hsbs_lib.data.pipeline import cache as cache_module
from hsbs_lib.data.pipeline.cache import cache_split


@dataclass
class Context:
    tmp_path: Path
    monkeypatch: pytest.MonkeyPatch
    caplog: pytest.LogCaptureFixture
    request: pytest.FixtureRequest

    @property
    def checkpoint(self) -> Path:
        return self.request.getfixturevalue("tiny_checkpoint")


@dataclass
class Outcome:
    code: int
    stdout: str = ""
    stderr: str = ""
    log: str = ""

    @property
    def text(self) -> str:
        return "\n".join((self.stdout, self.stderr, self.log))


@dataclass
class Case:
    """One bad input: ``run`` builds and runs it; the rest is the outcome it must have."""

    name: str
    run: Callable[[Context], Outcome]
    exit: int
    says: tuple[str, ...] = ()
    one_line_error: bool = False      # stderr is exactly one line


def hsbs(ctx: Context, *argv: str) -> Outcome:
    """``hsbs ARGV`` in this process with strict UTF-8 stdout/stderr; an escaping exception fails the case."""
    streams = {name: io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict", write_through=True)
               for name in ("stdout", "stderr")}
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = streams["stdout"], streams["stderr"]
    try:
        code = main(list(argv))
    finally:
        sys.stdout, sys.stderr = saved
    text = {name: stream.buffer.getvalue().decode("utf-8", "backslashreplace") for name, stream in streams.items()}
    return Outcome(code, text["stdout"], text["stderr"], ctx.caplog.text)


# ------------------------------------------------------------------------------------------- the data

def class_folders(root: Path, split: str, per_class: int) -> None:
    """``root/split/<class>/<i>.png`` for four classes, ``per_class`` lossless images each."""
    for class_name in ("anger", "happiness", "sadness", "surprise"):
        for i in range(per_class):
            fakes.write_class_image(root / split / class_name / f"{class_name}{i}.png", class_name, size=(20, 20))


def image_copy(ctx: Context, *, bad_train: bool = False, bad_test: bool = False) -> Path:
    """A small ``train/`` + ``test/`` class-folder copy, with a truncated JPEG in either split."""
    root = ctx.tmp_path / "copy"
    class_folders(root, "train", 3)
    class_folders(root, "test", 1)
    if bad_train:
        fakes.write_truncated_jpeg(root / "train" / "happiness" / "cut_train.jpg")
    if bad_test:
        fakes.write_truncated_jpeg(root / "test" / "anger" / "cut_test.jpg")
    return root


def train_args(ctx: Context, root: Path, *overrides: str) -> list[str]:
    return ["train", "--out", str(ctx.tmp_path / "run"), "data.name=imagefolder", f"data.root={root}",
            "data.val_split=none", "data.test_split=test", "data.input_size=32", "data.augment=none",
            f"data.cache_dir={ctx.tmp_path / 'cache'}", "model.name=baseline", "model.backbone_width=32",
            "train.epochs=1", "train.batch_size=4", "train.progress=false", "train.threads=1",
            "train.device=cpu", *overrides]


# ----------------------------------------------------------------- 1. skip_bad on the DataLoader path

def loader_bad_train_image_refused(ctx):
    outcome = hsbs(ctx, *train_args(ctx, image_copy(ctx, bad_train=True), "data.pipeline=loader"))
    assert not (ctx.tmp_path / "run" / "last.pt").exists()        # refused before any training
    return outcome


def loader_bad_test_image_refused_before_training(ctx):
    outcome = hsbs(ctx, *train_args(ctx, image_copy(ctx, bad_test=True), "data.pipeline=loader"))
    assert not (ctx.tmp_path / "run" / "last.pt").exists()        # not after an epoch of training
    return outcome


def loader_skip_bad_trains_and_lists_skipped(ctx):
    root = image_copy(ctx, bad_train=True, bad_test=True)
    outcome = hsbs(ctx, *train_args(ctx, root, "data.pipeline=loader", "data.skip_bad=true", "data.workers=2"))
    run = ctx.tmp_path / "run"
    assert (run / "last.pt").is_file() and (run / "eval.json").is_file()
    listed = (run / "skipped.txt").read_text()
    assert "cut_train.jpg" in listed and "cut_test.jpg" in listed and "truncated" in listed
    return outcome


def device_skip_bad_lists_skipped_too(ctx):
    root = image_copy(ctx, bad_test=True)
    outcome = hsbs(ctx, *train_args(ctx, root, "data.pipeline=device", "data.skip_bad=true"))
    assert "cut_test.jpg" in (ctx.tmp_path / "run" / "skipped.txt").read_text()
    return outcome


def loader_decode_pass_is_remembered_until_the_file_changes(ctx):
    from hsbs_lib.data.pipeline.cache import find_bad_images
    root = image_copy(ctx, bad_train=True)
    dataset = load_dataset("imagefolder", root, "train")
    assert [Path(e.path).name for e in find_bad_images(dataset, cache_dir=ctx.tmp_path / "cache")] == ["cut_train.jpg"]
    decoded = []
    ctx.monkeypatch.setattr(type(dataset), "load_image", lambda self, i: decoded.append(i) or np.zeros((4, 4, 3), np.uint8))
    assert len(find_bad_images(dataset, cache_dir=ctx.tmp_path / "cache")) == 1 and not decoded   # remembered
    ctx.monkeypatch.undo()
    fakes.write_class_image(root / "train" / "happiness" / "cut_train.jpg", "happiness")            # repaired
    assert find_bad_images(load_dataset("imagefolder", root, "train"), cache_dir=ctx.tmp_path / "cache") == []
    return Outcome(0)


# ------------------------------------------------------------------ 2. the cache key follows the files

def cache_rereads_a_replaced_image(ctx):
    root = image_copy(ctx)
    dataset = load_dataset("imagefolder", root, "train")
    first = cache_split(dataset, 8, cache_dir=ctx.tmp_path / "cache")
    path = Path(dataset.samples[0][0])
    fakes.write_image(path, (0, 255, 0), size=(24, 24))           # a new picture under the old name
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    again = cache_split(load_dataset("imagefolder", root, "train"), 8, cache_dir=ctx.tmp_path / "cache")
    assert again.location != first.location
    assert again.images[0].reshape(3, -1).mean(1).round().tolist() == [0, 255, 0]
    return Outcome(0)


def cache_accepts_a_repaired_image(ctx):
    root = image_copy(ctx, bad_train=True)
    skipping = load_dataset("imagefolder", root, "train", skip_bad=True)
    assert cache_split(skipping, 8, cache_dir=ctx.tmp_path / "cache").skipped == 1
    fakes.write_class_image(root / "train" / "happiness" / "cut_train.jpg", "happiness")   # repaired
    strict = load_dataset("imagefolder", root, "train")
    assert len(cache_split(strict, 8, cache_dir=ctx.tmp_path / "cache", skip_bad=False)) == len(strict)
    # and `hsbs check` agrees: the copy is clean now
    return hsbs(ctx, "check", "imagefolder", str(root), "--split", "train")


# -------------------------------------------------------------------------------- 3. a full cache disk

def no_temporary_left(ctx) -> None:
    cache = ctx.tmp_path / "cache"
    left = [entry.name for entry in cache.iterdir()] if cache.exists() else []
    assert not left, f"left behind in the cache folder: {left}"


def cache_disk_full_checked_before_writing(ctx):
    def full(path):
        return shutil._ntuple_diskusage(total=10**9, used=10**9 - 1000, free=1000)

    ctx.monkeypatch.setattr(cache_module.shutil, "disk_usage", full)
    outcome = hsbs(ctx, *train_args(ctx, image_copy(ctx), "data.pipeline=device"))
    no_temporary_left(ctx)
    return outcome


def cache_disk_fills_while_writing(ctx):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    ctx.monkeypatch.setattr(cache_module.np, "save", no_space)
    outcome = hsbs(ctx, *train_args(ctx, image_copy(ctx), "data.pipeline=device"))
    no_temporary_left(ctx)
    return outcome


def cache_stale_temporary_of_a_killed_build_removed(ctx):
    cache = ctx.tmp_path / "cache"
    stale = cache / f".imagefolder-train-8px-0123.tmp-{socket.gethostname()}-999999999-deadbeef"   # no such process
    stale.mkdir(parents=True)
    (stale / "images.npy").write_bytes(b"\0" * 100)
    cache_split(load_dataset("imagefolder", image_copy(ctx), "train"), 8, cache_dir=cache)
    assert not stale.exists()
    return Outcome(0)


# -------------------------------------------------------------------------------- 4. label-file text

def rafdb_label_lines(root: Path, lines: list[str], encoding: str) -> Path:
    fakes.make_rafdb_basic(root)
    label_file = root / "EmoLabel" / "list_patition_label.txt"
    label_file.write_bytes("\n".join(lines + [""]).encode(encoding))
    return label_file


def rafdb_lines(root: Path) -> list[str]:
    return (root / "EmoLabel" / "list_patition_label.txt").read_text().splitlines()


def utf16_label_file_is_read(ctx):
    root = ctx.tmp_path / "raf"
    fakes.make_rafdb_basic(root)
    rafdb_label_lines(root, rafdb_lines(root), "utf-16")           # Notepad's "Unicode": BOM + UTF-16-LE
    return hsbs(ctx, "check", "rafdb", str(root))


def utf16_csv_is_read(ctx):
    root = ctx.tmp_path / "affectnet"
    fakes.make_affectnet_csv(root)
    for path in root.rglob("*.csv"):
        path.write_bytes(path.read_text(encoding="utf-8").encode("utf-16"))
    return hsbs(ctx, "check", "affectnet", str(root), "--num-classes", "8")


def utf16_without_bom_label_file_is_read(ctx):
    root = ctx.tmp_path / "raf"
    fakes.make_rafdb_basic(root)
    rafdb_label_lines(root, rafdb_lines(root), "utf-16-be")
    return hsbs(ctx, "check", "rafdb", str(root))


def undecodable_label_file_is_named(ctx):
    root = ctx.tmp_path / "raf"
    fakes.make_rafdb_basic(root)
    rafdb_label_lines(root, rafdb_lines(root) + ["train_café.jpg 1"], "latin-1")   # not UTF-8
    return hsbs(ctx, "check", "rafdb", str(root))


def unicode_digit_label_is_a_bad_entry(ctx):
    root = ctx.tmp_path / "raf"
    fakes.make_rafdb_basic(root)
    rafdb_label_lines(root, rafdb_lines(root) + ["train_00001.jpg ²"], "utf-8")
    return hsbs(ctx, "check", "rafdb", str(root), "--no-decode")


def unicode_digit_class_folder_is_a_bad_entry(ctx):
    root = ctx.tmp_path / "raf"
    fakes.make_rafdb_folders(root, digits=True)
    fakes.write_class_image(root / "train" / "²" / "x.jpg", "fear")
    return hsbs(ctx, "check", "rafdb", str(root), "--no-decode")


def unicode_digit_fer2013_emotion_is_a_bad_entry(ctx):
    root = ctx.tmp_path / "fer"
    fakes.make_fer2013_csv(root)
    with open(root / "fer2013.csv", "a", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerow(["³", fakes.grey_pixels(20), "Training"])
    return hsbs(ctx, "check", "fer2013", str(root), "--no-decode", "--split", "train")


# ------------------------------------------------------------- 5. file names that are not UTF-8

NOT_UTF8 = os.fsdecode(b"caf\xe9")       # Latin-1 "café": not valid UTF-8


def non_utf8_file_name_in_check(ctx):
    root = image_copy(ctx)
    fakes.write_truncated_jpeg(root / "train" / "anger" / f"{NOT_UTF8}.jpg")
    return hsbs(ctx, "check", "imagefolder", str(root), "--split", "train")


def non_utf8_file_name_in_predict(ctx):
    folder = ctx.tmp_path / "photos"
    fakes.write_class_image(folder / f"{NOT_UTF8}.png", "happiness", size=(40, 40))
    return hsbs(ctx, "predict", str(folder), "--checkpoint", str(ctx.checkpoint), "--no-detect")


# ------------------------------------------------------------------- predict on input that is not there

def predict_missing_file(ctx):
    return hsbs(ctx, "predict", str(ctx.tmp_path / "nowhere.jpg"), "--checkpoint", str(ctx.checkpoint))


def predict_empty_folder(ctx):
    (ctx.tmp_path / "empty").mkdir()
    (ctx.tmp_path / "empty" / "notes.txt").write_text("no photos here")
    return hsbs(ctx, "predict", str(ctx.tmp_path / "empty"), "--checkpoint", str(ctx.checkpoint))


# ------------------------------------------------------------- issue 28, rule 3: what a listing would skip

def symlink_loop_and_dangling_link_in_check(ctx):
    root = image_copy(ctx)
    (root / "train" / "anger" / "gone.png").symlink_to(ctx.tmp_path / "nowhere.png")
    (root / "train" / "happiness" / "loop.png").symlink_to(root / "train" / "happiness" / "loop.png")
    return hsbs(ctx, "check", "imagefolder", str(root), "--split", "train")


def dangling_link_refuses_training(ctx):
    root = image_copy(ctx)
    (root / "train" / "anger" / "gone.png").symlink_to(ctx.tmp_path / "nowhere.png")
    outcome = hsbs(ctx, *train_args(ctx, root))
    assert not (ctx.tmp_path / "run").exists()
    return outcome


def rafdb_image_listed_twice_with_two_labels(ctx):
    root = ctx.tmp_path / "raf"
    fakes.make_rafdb_basic(root)
    rafdb_label_lines(root, rafdb_lines(root) + ["train_00001.jpg 4"], "utf-8")    # listed as sadness, then happiness
    return hsbs(ctx, "check", "rafdb", str(root), "--no-decode")


def rafdb_image_listed_twice_with_one_label(ctx):
    root = ctx.tmp_path / "raf"
    fakes.make_rafdb_basic(root)
    rafdb_label_lines(root, rafdb_lines(root) + ["train_00001.jpg 5"], "utf-8")    # sadness again
    assert len(load_dataset("rafdb", root, "train")) == len(fakes.RAF_TRAIN)       # kept once
    return hsbs(ctx, "check", "rafdb", str(root), "--no-decode")


def rafdb_malformed_lines_counted_once(ctx):
    root = ctx.tmp_path / "raf"
    fakes.make_rafdb_basic(root)
    malformed = ["train_00001.jpg", "train_00002.jpg 4 4", "train_x", "notes", "test_0001.jpg", "a b c",
                 "train_00003.jpg 1 2 3", "lonely"]
    outcome = hsbs(ctx, "check", "rafdb", str(root), "--no-decode")
    assert outcome.code == 0
    rafdb_label_lines(root, rafdb_lines(root) + malformed, "utf-8")
    outcome = hsbs(ctx, "check", "rafdb", str(root), "--no-decode")
    test_lines = [line for line in outcome.stdout.splitlines() if line.startswith("  [test]")]
    assert test_lines == [f"  [test] {root / 'EmoLabel' / 'list_patition_label.txt'}:12: malformed line "
                          f"'test_0001.jpg': expected 'NAME LABEL'"], test_lines     # only the test_ line
    return outcome


def affectnet_row_outside_the_root(ctx, listed: str):
    root = ctx.tmp_path / "affectnet"
    fakes.make_affectnet_csv(root)
    secret = ctx.tmp_path / "secret.jpg"                  # an image outside the copy: must never be read
    fakes.write_class_image(secret, "anger")
    with open(root / "training.csv", "a", newline="") as handle:
        csv.writer(handle).writerow([listed.format(secret=secret), 0, 0, 10, 10, "1;2", 6, 0, 0])
    ctx.monkeypatch.setattr("hsbs_lib.data.datasets.adapter.decode_image",
                            lambda path: pytest.fail(f"read {path}") if Path(path) == secret else np.zeros((4, 4, 3)))
    return hsbs(ctx, "check", "affectnet", str(root), "--split", "train")


def affectnet_row_listed_twice_with_two_codes(ctx):
    root = ctx.tmp_path / "affectnet"
    fakes.make_affectnet_csv(root)
    with open(root / "training.csv", "a", newline="") as handle:
        csv.writer(handle).writerow(["1/h.jpg", 0, 0, 10, 10, "1;2", 6, 0, 0])     # happiness above, anger here
    return hsbs(ctx, "check", "affectnet", str(root), "--split", "train", "--no-decode")


def single_class_copy(ctx, *, test_classes=("anger", "happiness", "sadness", "surprise")):
    root = ctx.tmp_path / "one"
    for i in range(4):
        fakes.write_class_image(root / "train" / "happiness" / f"h{i}.png", "happiness", size=(20, 20))
    for class_name in test_classes:
        fakes.write_class_image(root / "test" / class_name / "t.png", class_name, size=(20, 20))
    return root


def single_class_copy_refuses_training(ctx):
    outcome = hsbs(ctx, *train_args(ctx, single_class_copy(ctx)))
    assert not (ctx.tmp_path / "run").exists()
    return outcome


def single_class_test_split_is_said(ctx):
    root = image_copy(ctx)
    shutil.rmtree(root / "test")
    fakes.write_class_image(root / "test" / "anger" / "t.png", "anger", size=(20, 20))
    return hsbs(ctx, *train_args(ctx, root))


def eval_on_a_test_split_of_one_class(ctx):
    root = single_class_copy(ctx, test_classes=("anger",))
    (root / "train").rename(root / "unused")                         # eval reads the test split only
    return hsbs(ctx, "eval", "--checkpoint", str(ctx.checkpoint), "--data", "imagefolder", "--root", str(root),
                "--split", "test", "--out", str(ctx.tmp_path / "eval.json"), "data.val_split=none")


def single_class_copy_in_check(ctx):
    return hsbs(ctx, "check", "imagefolder", str(single_class_copy(ctx)), "--no-decode")


def cache_of_python_objects(ctx):
    root = image_copy(ctx)
    assert hsbs(ctx, *train_args(ctx, root, "data.pipeline=device")).code == 0
    shutil.rmtree(ctx.tmp_path / "run")
    caches = sorted((ctx.tmp_path / "cache").glob("imagefolder-train-*"))
    np.save(caches[0] / "images.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    outcome = hsbs(ctx, *train_args(ctx, root, "data.pipeline=device"))
    assert str(caches[0]) in outcome.stderr, outcome.stderr
    return outcome


# ------------------------------------------------------------------ issue 28, rule 2: sizes that cannot fit

def predict_margin(ctx, margin: str):
    folder = ctx.tmp_path / "photos"
    fakes.write_class_image(folder / "face.png", "happiness", size=(40, 40))
    return hsbs(ctx, "predict", str(folder), "--checkpoint", str(ctx.checkpoint), f"--margin={margin}")


def checkpoint_with_input_size(ctx, size: int) -> Path:
    import torch
    state = torch.load(ctx.checkpoint, map_location="cpu", weights_only=True)
    state["input_size"] = size
    path = ctx.tmp_path / "huge.pt"
    torch.save(state, path)
    return path


def predict_huge_stored_input_size(ctx):
    folder = ctx.tmp_path / "photos"
    fakes.write_class_image(folder / "face.png", "happiness", size=(40, 40))
    return hsbs(ctx, "predict", str(folder), "--checkpoint", str(checkpoint_with_input_size(ctx, 10**6)), "--no-detect")


def eval_huge_stored_input_size(ctx):
    return hsbs(ctx, "eval", "--checkpoint", str(checkpoint_with_input_size(ctx, 10**6)),
                "--out", str(ctx.tmp_path / "eval.json"))


CASES = [
    Case("loader: a bad training image refuses to start and is named", loader_bad_train_image_refused,
         exit=1, says=("cut_train.jpg", "truncated", "skip_bad")),
    Case("loader: a bad test image refuses before training, not after an epoch",
         loader_bad_test_image_refused_before_training, exit=1, says=("cut_test.jpg", "skip_bad")),
    Case("loader: skip_bad=true under workers=2 trains, lists skipped entries on screen and in skipped.txt",
         loader_skip_bad_trains_and_lists_skipped, exit=0, says=("skipped 2 bad entries", "cut_test.jpg")),
    Case("device: skip_bad=true lists skipped entries in skipped.txt", device_skip_bad_lists_skipped_too,
         exit=0, says=("skipped 1 bad entries",)),
    Case("loader: the decode pass is remembered, and redone for a repaired file",
         loader_decode_pass_is_remembered_until_the_file_changes, exit=0),
    Case("cache: an image replaced after caching is re-read", cache_rereads_a_replaced_image, exit=0),
    Case("cache: a repaired image is accepted, as `hsbs check` says", cache_accepts_a_repaired_image,
         exit=0, says=("no bad entries",)),
    Case("cache: too little free space is refused before writing, naming the folder and data.cache_dir",
         cache_disk_full_checked_before_writing, exit=1, says=("cache", "data.cache_dir", "free"),
         one_line_error=True),
    Case("cache: ENOSPC while writing is one line, temporary folder removed", cache_disk_fills_while_writing,
         exit=1, says=("data.cache_dir", "No space left"), one_line_error=True),
    Case("cache: a killed build's temporary folder is removed on the next build",
         cache_stale_temporary_of_a_killed_build_removed, exit=0),
    Case("labels: a UTF-16 label file (with BOM) is read", utf16_label_file_is_read, exit=0,
         says=("no bad entries",)),
    Case("labels: a UTF-16 csv (with BOM) is read", utf16_csv_is_read, exit=0, says=("no bad entries",)),
    Case("labels: a UTF-16 label file without a BOM is read", utf16_without_bom_label_file_is_read, exit=0,
         says=("no bad entries",)),
    Case("labels: an undecodable label file is named in one line", undecodable_label_file_is_named, exit=1,
         says=("list_patition_label.txt", "UTF-8"), one_line_error=True),
    Case("labels: a Unicode digit label is a bad entry", unicode_digit_label_is_a_bad_entry, exit=1,
         says=("'²'", "1 bad entries")),
    Case("labels: a Unicode digit class folder is a bad entry", unicode_digit_class_folder_is_a_bad_entry,
         exit=1, says=("'²'", "1 bad entries")),
    Case("labels: a Unicode digit FER2013 emotion is a bad entry", unicode_digit_fer2013_emotion_is_a_bad_entry,
         exit=1, says=("'³'", "1 bad entries")),
    Case("names: a non-UTF-8 file name is printed by check", non_utf8_file_name_in_check, exit=1,
         says=("caf\\xe9.jpg", "truncated")),
    Case("names: a non-UTF-8 file name is printed by predict", non_utf8_file_name_in_predict, exit=0,
         says=("caf\\xe9.png",)),
    Case("predict: a missing file is an error", predict_missing_file, exit=1, says=("nowhere.jpg",),
         one_line_error=True),
    Case("predict: a folder without images is an error", predict_empty_folder, exit=1, says=("empty", "no image"),
         one_line_error=True),
    # issue 28, rule 3: nothing a listing skips goes unsaid, each problem counted by kind
    Case("check: a symlink loop and a dangling symlink are listed and counted", symlink_loop_and_dangling_link_in_check,
         exit=1, says=("gone.png: dangling symbolic link to", "loop.png: symbolic link loop",
                       "2 bad entries (1 dangling symbolic link, 1 symbolic link loop;")),
    Case("train: a dangling symlink refuses training, counted", dangling_link_refuses_training, exit=1,
         says=("gone.png", "(1 dangling symbolic link)")),
    Case("labels: one RAF-DB image listed twice with two labels is a bad entry", rafdb_image_listed_twice_with_two_labels,
         exit=1, says=("train_00001_aligned.jpg: listed 2 times with different labels (happiness, sadness)",
                       "1 bad entries (1 image listed with conflicting labels;")),
    Case("labels: one RAF-DB image listed twice with one label is kept once", rafdb_image_listed_twice_with_one_label,
         exit=0, says=("listed again with the same label: 1", "no bad entries")),
    Case("labels: malformed lines are counted once, under their own split", rafdb_malformed_lines_counted_once,
         exit=1, says=("8 bad entries (8 malformed lines;",)),
    Case("labels: an AffectNet row with an absolute path is not read", functools.partial(
        affectnet_row_outside_the_root, listed="{secret}"), exit=1,
         says=("is not under Manually_Annotated_Images/", "(1 path outside the dataset root;")),
    Case("labels: an AffectNet row climbing out of the root is not read", functools.partial(
        affectnet_row_outside_the_root, listed="../../secret.jpg"), exit=1,
         says=("'../../secret.jpg' is not under Manually_Annotated_Images/",)),
    Case("labels: an AffectNet image listed twice with two codes is a bad entry",
         affectnet_row_listed_twice_with_two_codes, exit=1,
         says=("h.jpg: listed 2 times with different labels (happiness, anger)",
               "(1 image listed with conflicting labels;")),
    Case("train: a 7-class model on a copy of one class is refused", single_class_copy_refuses_training, exit=1,
         says=("the training split holds one class only (4 images of happiness, none of the other 6 classes)",),
         one_line_error=True),
    Case("train: a test split of one class is said", single_class_test_split_is_said, exit=0,
         says=("the test split holds one class only (1 image of anger",)),
    Case("eval: a test split of one class is said", eval_on_a_test_split_of_one_class, exit=0,
         says=("the test split holds one class only (1 image of anger",)),
    Case("check: a copy of one class is said", single_class_copy_in_check, exit=1,
         says=("[train] holds one class only: 4 images of happiness, none of the other 6 classes",)),
    Case("cache: an images.npy of Python objects names the cache", cache_of_python_objects, exit=1,
         says=("is unreadable", "delete that folder"), one_line_error=True),
    # issue 28, rule 2: a size this machine cannot allocate is one line naming the key
    Case("predict: --margin -0.6 is refused", functools.partial(predict_margin, margin="-0.6"), exit=1,
         says=("--margin expects", "got -0.6"), one_line_error=True),
    Case("predict: --margin 1000 is refused", functools.partial(predict_margin, margin="1000"), exit=1,
         says=("--margin expects", "got 1000.0"), one_line_error=True),
    Case("predict: a checkpoint storing input size 10^6 is refused", predict_huge_stored_input_size, exit=1,
         says=("huge.pt's stored input_size = 1,000,000 pixels needs about",), one_line_error=True),
    Case("eval: a checkpoint storing input size 10^6 is refused", eval_huge_stored_input_size, exit=1,
         says=("huge.pt's stored input_size = 1,000,000 pixels needs about",), one_line_error=True),
]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A baseline trained for one short epoch on SynthFER, as `hsbs train` saves it."""
    out = tmp_path_factory.mktemp("tiny_run")
    assert main(["train", "--out", str(out), "model.name=baseline", "model.backbone_width=32", "data.n_train=32",
                 "data.n_val=16", "data.n_test=16", "data.input_size=32", "train.epochs=1", "train.batch_size=16",
                 "train.progress=false", "train.device=cpu"]) == 0
    return out / "best.pt"


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input(case: Case, tmp_path, monkeypatch, caplog, request):
    caplog.set_level("INFO")
    outcome = case.run(Context(tmp_path, monkeypatch, caplog, request))
    assert outcome.code == case.exit, outcome.text
    assert "Traceback" not in outcome.text
    for words in case.says:
        assert words in outcome.text, f"expected {words!r} in:\n{outcome.text}"
    if case.one_line_error:
        assert len(outcome.stderr.strip().splitlines()) == 1, outcome.stderr
