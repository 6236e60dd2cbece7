"""The course on a student's own FER2013 copy (``$FER2013_ROOT``), and the shipped model where there is none.

The first tests need no real faces: SynthFER faces, turned grey, are written in FER2013's two layouts
(Kaggle's ``fer2013.csv`` and the train/test image folders) and read back the way notebook 01 reads a
student's copy. Notebook 01 runs headless against such a csv. The last test needs a real copy and skips,
saying so, when ``FER2013_ROOT`` is not set.
"""
import os
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

from hsbs_lib.data.datasets import load_dataset
from hsbs_lib.data.fer2013_files import (sample_fer2013_faces, student_fer2013_root, write_fer2013_csv,
                                         write_fer2013_folders)
from hsbs_lib.data.labels import CANONICAL_7
from hsbs_lib.data.synthfer import render_synthfer
from hsbs_lib.inference import Predictor

ROOT = Path(__file__).resolve().parents[1]


def grey_faces(n_per_class: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Exactly ``n_per_class`` grey 48 px SynthFER faces of every class."""
    faces = render_synthfer(np.arange(30 * n_per_class), size=48, seed=seed, balanced=True)
    keep = np.concatenate([np.flatnonzero(faces["labels"] == k)[:n_per_class] for k in range(7)])
    assert len(keep) == 7 * n_per_class
    grey = faces["images"][keep].mean(axis=-1).round().astype(np.uint8)
    return grey, [CANONICAL_7[label] for label in faces["labels"][keep]]


@pytest.fixture(scope="module")
def csv_copy(tmp_path_factory):
    images, names = grey_faces(6)
    root = tmp_path_factory.mktemp("fer2013_csv")
    seen = {name: 0 for name in CANONICAL_7}          # per class: four Training, one PublicTest, one PrivateTest
    usage = []
    for name in names:
        usage.append((("Training",) * 4 + ("PublicTest", "PrivateTest"))[seen[name]])
        seen[name] += 1
    write_fer2013_csv(root / "fer2013.csv", images, names, usage)
    return root, names


def test_root_comes_from_the_argument_then_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("FER2013_ROOT", raising=False)
    assert student_fer2013_root() is None and student_fer2013_root("") is None
    monkeypatch.setenv("FER2013_ROOT", str(tmp_path))
    assert student_fer2013_root() == tmp_path
    other = tmp_path / "other"
    other.mkdir()
    assert student_fer2013_root(other) == other
    with pytest.raises(FileNotFoundError, match="FER2013_ROOT"):
        student_fer2013_root(tmp_path / "typo")


def test_sample_reads_per_class_faces_from_the_csv(csv_copy):
    root, _ = csv_copy
    images, classes = sample_fer2013_faces(root, per_class=3, seed=1)
    assert images.dtype == np.uint8 and images.shape[1:3] == (48, 48)
    assert sorted(set(classes)) == sorted(CANONICAL_7)
    assert all(classes.count(name) == 3 for name in CANONICAL_7)
    # the file itself works as the root too, and a seed draws the same faces again
    again, _ = sample_fer2013_faces(root / "fer2013.csv", per_class=3, seed=1)
    assert np.array_equal(images, again)


def test_sample_reads_the_folder_export_with_its_labels(tmp_path):
    images, names = grey_faces(2, seed=3)
    write_fer2013_folders(tmp_path, "train", images, names)
    write_fer2013_folders(tmp_path, "test", images[:7], names[:7])
    drawn, classes = sample_fer2013_faces(tmp_path, per_class=2)
    assert len(drawn) == 14 and sorted(set(classes)) == sorted(CANONICAL_7)
    dataset = load_dataset("fer2013", tmp_path, "train")
    by_name = {name: i for i, name in enumerate(dataset.classes)}
    assert sorted(np.asarray(dataset.targets).tolist()) == sorted(by_name[n] for n in names)


def test_notebook_01_reads_a_students_copy(csv_copy, tmp_path, monkeypatch):
    root, _ = csv_copy
    monkeypatch.setenv("SMOKE", "1")
    monkeypatch.setenv("FER2013_ROOT", str(root))
    monkeypatch.setenv("HSBS_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("HSBS_NO_PROGRESS", "1")
    monkeypatch.setenv("HSBS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))
    path = ROOT / "notebooks" / "01_data_preparation.ipynb"
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=1200, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    printed = "\n".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                        for output in cell.get("outputs", []))
    assert f"{root}: 28 faces drawn from the train split" in printed
    assert "face 0: " in printed           # the shipped model read the photo's face


def test_the_shipped_model_answers_with_class_names():
    predictor = Predictor("fer2013")
    images, _ = grey_faces(1)
    probabilities, _ = predictor.classify([np.repeat(image[..., None], 3, axis=2) for image in images])
    assert predictor.classes == list(CANONICAL_7)
    assert probabilities.shape == (7, 7) and np.allclose(probabilities.sum(1).numpy(), 1, atol=1e-4)


STUDENT_COPY = os.environ.get("FER2013_ROOT")


@pytest.mark.skipif(not STUDENT_COPY, reason="no FER2013 copy: set FER2013_ROOT to fer2013.csv or its train/ "
                                             "and test/ folders to run this check on real faces")
def test_the_shipped_model_beats_the_majority_class_on_the_students_copy():
    root = student_fer2013_root(STUDENT_COPY)
    dataset = load_dataset("fer2013", root, "test")      # PrivateTest, or the export's test/ folder
    targets = np.asarray(dataset.targets)
    index = np.random.default_rng(0).permutation(len(targets))[:700]
    predictor = Predictor("fer2013")
    correct = 0
    for start in range(0, len(index), 100):
        chunk = index[start:start + 100]
        probabilities, _ = predictor.classify([dataset.load_image(int(i)) for i in chunk])
        correct += int((probabilities.argmax(1).numpy() == targets[chunk]).sum())
    majority = np.bincount(targets[index]).max() / len(index)
    assert correct / len(index) > majority + 0.15, (correct / len(index), majority)
