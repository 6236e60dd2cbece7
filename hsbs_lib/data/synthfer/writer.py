"""SynthFER on disk in the RAF-DB basic layout, and the ``hsbs synth`` command that writes it."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from hsbs_lib.data.synthfer.params import EXPRESSION_CLASSES
from hsbs_lib.data.synthfer.render import check_size, render_synthfer
from hsbs_lib.outputs import MANIFEST_NAME, OutputFolder, atomic_write


META_NAME = "synthfer_meta.npz"   # also the mark of a folder this writer filled
WRITING_NAME = ".hsbs-synth-writing"   # present while writing, so an interrupted write can be redone


def refuse_foreign_folder(root: Path, *, overwrite: bool = False) -> OutputFolder:
    """The folder under the output rule (:mod:`hsbs_lib.outputs`): one that holds files is written into only
    when its manifest records that hsbs synth filled it (its synthfer_meta.npz, or the mark of a write that
    was interrupted), or with ``overwrite``; else a RAF-DB copy's label file and images would be replaced."""
    outputs = OutputFolder(root, "synth", force=overwrite)
    if not root.exists():
        return outputs
    if not root.is_dir():
        raise ValueError(f"--out {root} is a file, not a folder")
    names = sorted(path.name for path in root.iterdir() if path.name != MANIFEST_NAME)
    own = outputs.written_by_me(META_NAME) or outputs.written_by_me(WRITING_NAME)
    if names and not own and not overwrite:
        shown = ", ".join(names[:4]) + (" ..." if len(names) > 4 else "")
        raise ValueError(f"--out {root} already holds files ({shown}) that hsbs synth did not write; its label file "
                         "and images would be replaced. Choose an empty or new folder, or pass --overwrite")
    return outputs


def write_rafdb_layout(out, *, n_train: int, n_test: int, size: int = 100, seed: int = 0,
                       balanced: bool = False, chunk: int = 512, overwrite: bool = False) -> Path:
    """Write SynthFER to ``out`` in the RAF-DB basic layout and return ``out``.

    ``EmoLabel/list_patition_label.txt`` (lines ``train_00001.jpg 4``, RAF digits = canonical + 1),
    ``Image/aligned/train_00001_aligned.jpg`` (JPEG, quality 95), test files ``test_0001.jpg`` onwards,
    and ``synthfer_meta.npz`` with file_names, labels, poses, subjects, intensity, occluded and masks
    (N, 4, S, S) in the order of file_names.

    ``out`` must be new, empty or an earlier output of this function; ``overwrite`` writes into any folder.
    """
    from PIL import Image

    check_size(size)   # before the folder is made: a refused command leaves nothing behind
    root = Path(out)
    outputs = refuse_foreign_folder(root, overwrite=overwrite)
    image_dir = root / "Image" / "aligned"
    outputs.write_text(WRITING_NAME, "hsbs synth is writing this folder\n")   # recorded: a rerun may finish it
    (root / META_NAME).unlink(missing_ok=True)   # an earlier output's extras no longer describe the folder
    image_dir.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    meta: dict[str, list] = {key: [] for key in ("labels", "poses", "subjects", "intensity", "occluded", "masks")}
    names: list[str] = []
    for split, count, digits in (("train", n_train, 5), ("test", n_test, 4)):
        width = max(digits, len(str(count)))
        for start in range(0, count, chunk):
            indices = np.arange(start, min(count, start + chunk))
            rendered = render_synthfer(indices, size=size, seed=seed, split=split, balanced=balanced)
            for i, image, label in zip(indices, rendered["images"], rendered["labels"]):
                name = f"{split}_{i + 1:0{width}d}.jpg"
                atomic_write(image_dir / f"{name[:-4]}_aligned.jpg",
                             lambda path, image=image: Image.fromarray(image).save(path, format="JPEG", quality=95))
                lines.append(f"{name} {int(label) + 1}")
                names.append(name)
            for key in meta:
                meta[key].append(rendered[key])
    outputs.write_text("EmoLabel/list_patition_label.txt", "\n".join(lines) + "\n")
    arrays = {key: np.concatenate(value) if value else np.zeros(0) for key, value in meta.items()}
    outputs.write(META_NAME, lambda path: np.savez_compressed(path, file_names=np.array(names), **arrays))
    (root / WRITING_NAME).unlink()
    return root


# ----------------------------------------------------------------------------------------------
# hsbs synth
# ----------------------------------------------------------------------------------------------

def add_synth_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="folder to write the RAF-DB basic layout into")
    parser.add_argument("--n", type=int, default=5000, help="total images, train and test together")
    parser.add_argument("--size", type=int, default=100, help="image side in pixels (RAF-DB aligned: 100)")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="share of images in the test split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--balanced", action="store_true", help="uniform classes instead of RAF-DB's shares")
    parser.add_argument("--overwrite", "--force", action="store_true",
                        help="write into --out even when it holds files hsbs synth did not write")


def run_synth(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise ValueError(f"--n must be positive, got {args.n}")
    if not 0.0 <= args.test_fraction < 1.0:
        raise ValueError(f"--test-fraction must be in [0, 1), got {args.test_fraction}")
    n_test = int(round(args.n * args.test_fraction))
    n_train = args.n - n_test
    start = time.perf_counter()
    root = write_rafdb_layout(args.out, n_train=n_train, n_test=n_test, size=args.size, seed=args.seed,
                              balanced=args.balanced, overwrite=args.overwrite)
    labels = [int(line.split()[1]) - 1 for line in
              (root / "EmoLabel" / "list_patition_label.txt").read_text().split("\n") if line]
    counts = np.bincount(np.array(labels, dtype=np.int64), minlength=len(EXPRESSION_CLASSES))
    print(f"wrote SynthFER (seed {args.seed}, {args.size}x{args.size}) in the RAF-DB basic layout to {root}")
    print(f"  train: {n_train} images, test: {n_test} images ({time.perf_counter() - start:.1f} s)")
    print("  per class: " + ", ".join(f"{name} {count}" for name, count in zip(EXPRESSION_CLASSES, counts)))
    print(f"  labels: {root / 'EmoLabel' / 'list_patition_label.txt'}")
    print(f"  images: {root / 'Image' / 'aligned'}")
    print(f"  extras: {root / 'synthfer_meta.npz'} (poses, subjects, intensity, region masks)")
    return 0
