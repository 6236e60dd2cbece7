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
