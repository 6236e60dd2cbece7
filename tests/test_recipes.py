"""Every shipped recipe loads, builds its model, and trains one step on a fake copy of its dataset.

The fake copies follow DATASETS.md's layouts exactly (tests/fakes.py), so this is the path a user with
a real RAF-DB, FER2013, ... copy takes: `hsbs train --config configs/DATASET_METHOD.yaml data.root=...`.
"""
from pathlib import Path

import pytest
import torch

import fakes
from hsbs_lib.config import load_config
from hsbs_lib.data.labels import class_names
from hsbs_lib.engine.build import build_model
from hsbs_lib.engine.train import fit

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ["rafdb", "fer2013", "ferplus", "affectnet7", "affectnet8", "sfew", "kdef", "ckplus"]
METHODS = ["baseline", "hsbs", "clcl", "phanet", "mfer"]
MAKERS = {
    "rafdb": fakes.make_rafdb_basic, "fer2013": fakes.make_fer2013_csv, "ferplus": fakes.make_ferplus,
    "affectnet7": fakes.make_affectnet_csv, "affectnet8": fakes.make_affectnet_csv, "sfew": fakes.make_sfew,
    "kdef": lambda root: fakes.make_kdef(root)[0], "ckplus": fakes.make_ckplus,
}


def recipe_files():
    return sorted(p for p in (ROOT / "configs").glob("*.yaml")
                  if not p.name.startswith(("compare_", "ablation_")))


def test_one_recipe_per_dataset_and_method():
    names = {p.stem for p in recipe_files()}
    missing = {f"{d}_{m}" for d in DATASETS + ["synthfer"] for m in METHODS} - names
    assert not missing, f"missing recipes: {sorted(missing)}"


@pytest.mark.parametrize("path", recipe_files(), ids=lambda p: p.stem)
def test_recipe_loads_and_builds_its_model(path):
    config = load_config(path)
    model = build_model(config, class_names(config.data.num_classes), load_pretrained=False).eval()
    size = config.data.input_size
    with torch.no_grad():
        out = model(torch.zeros(2, 3, size, size))
    assert out.logits.shape == (2, config.data.num_classes)


# These fake copies hold one training image per class: nothing to hold out for validation (the hold-out
# itself is tested in test_splits.py). FER2013 selects on PublicTest, KDEF and CK+ hold out whole subjects.
NO_HOLDOUT = {"rafdb", "ferplus", "affectnet7", "affectnet8", "sfew"}


@pytest.mark.parametrize("dataset", DATASETS)
def test_recipe_trains_a_step_on_a_fake_copy(dataset, tmp_path):
    MAKERS[dataset](tmp_path / "copy")
    validation = ["data.val_split=none"] if dataset in NO_HOLDOUT else []
    config = load_config(ROOT / "configs" / f"{dataset}_baseline.yaml", [*validation,
        f"data.root={tmp_path / 'copy'}", "data.input_size=48", "train.epochs=1", "train.batch_size=4",
        "train.eval_batch_size=8", "train.progress=false", f"data.cache_dir={tmp_path / 'cache'}",
        f"out={tmp_path / 'run'}"])
    result = fit(config)
    assert (tmp_path / "run" / "best.pt").is_file()
    assert result.classes == class_names(config.data.num_classes)
    assert 0.0 <= result.best["accuracy"] <= 1.0
