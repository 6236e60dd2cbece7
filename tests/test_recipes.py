"""Recipes are composed on the command line: ``hsbs train --data D --method M`` merges
configs/datasets/D.yaml, then configs/methods/M.yaml (the method wins where both set a key), then
``key=value`` overrides; the SynthFER demo recipes are full files (configs/synthfer_M.yaml) and replace the
two layers. Every composition loads, builds its model, and trains one step on a fake copy of its dataset,
laid out as DATASETS.md says (tests/fakes.py), which is the path a user with a real copy takes:
``hsbs train --data rafdb --method hsbs data.root=/path/to/copy``.
"""
import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml

import fakes
from hsbs_lib.cli import main
from hsbs_lib.config import Config, load_config, recipe_files
from hsbs_lib.data.labels import class_names
from hsbs_lib.engine.build import build_model

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
DATASETS = ["rafdb", "fer2013", "ferplus", "affectnet7", "affectnet8", "sfew", "kdef", "ckplus"]
METHODS = ["baseline", "hsbs", "clcl", "phanet", "mfer"]
PAIRS = [(data, method) for data in [*DATASETS, "synthfer"] for method in METHODS]
MAKERS = {
    "rafdb": fakes.make_rafdb_basic, "fer2013": fakes.make_fer2013_csv, "ferplus": fakes.make_ferplus,
    "affectnet7": fakes.make_affectnet_csv, "affectnet8": fakes.make_affectnet_csv, "sfew": fakes.make_sfew,
    "kdef": lambda root: fakes.make_kdef(root)[0], "ckplus": fakes.make_ckplus,
}

# What every dataset x method recipe resolved to when each was a file of its own (configs/D_M.yaml:
# ``include: [datasets/D.yaml, methods/M.yaml]`` plus name and out), as a digest of the resolved config
# without name and out (numbers compared as floats). A deliberate change to a dataset or method file
# changes these: print the new table with ``python tests/test_recipes.py`` and paste it here.
RECIPE_DIGESTS = {
    "rafdb_baseline": "1229535a70ccc3f7",
    "rafdb_hsbs": "cf7bf0c9d8da28fb",
    "rafdb_clcl": "4597e7ff34935f2c",
    "rafdb_phanet": "28913ba9638d90ef",
    "rafdb_mfer": "1b8006e7025f3b41",
    "fer2013_baseline": "cfbf42eba21b3fc6",
    "fer2013_hsbs": "db78c71495a835ed",
    "fer2013_clcl": "d018c6d118b9b423",
    "fer2013_phanet": "dd24cee7258a01fc",
    "fer2013_mfer": "2cd5a126ebe8df52",
    "ferplus_baseline": "e0e2b61c0c358846",
    "ferplus_hsbs": "bbf921221b213235",
    "ferplus_clcl": "d7fb53529d06f329",
    "ferplus_phanet": "4362a570dbbe985c",
    "ferplus_mfer": "57612f749199cd1b",
    "affectnet7_baseline": "26c08a5597c996f7",
    "affectnet7_hsbs": "454d5604e2196b43",
    "affectnet7_clcl": "45c4f3907324c6ac",
    "affectnet7_phanet": "cf05d01a366b6931",
    "affectnet7_mfer": "a508d40b65f9847d",
    "affectnet8_baseline": "d46ebc971be073a4",
    "affectnet8_hsbs": "bac28883ba6c28a9",
    "affectnet8_clcl": "487a0a01f305db0c",
    "affectnet8_phanet": "303218f20ef5b5bc",
    "affectnet8_mfer": "334796cb49cecb5f",
    "sfew_baseline": "41126134f83296ce",
    "sfew_hsbs": "353483454bd54158",
    "sfew_clcl": "59153fa6ab1e78e7",
    "sfew_phanet": "ab5ec6de6dce22c6",
    "sfew_mfer": "315f828dc523a681",
    "kdef_baseline": "ff12b615d1270d7c",
    "kdef_hsbs": "53ff8319e2c97bde",
    "kdef_clcl": "cf64f895dbc8a829",
    "kdef_phanet": "bb48b4f446aedeab",
    "kdef_mfer": "23098f3d7389d268",
    "ckplus_baseline": "a615ff626d895937",
    "ckplus_hsbs": "465414f74ae38dba",
    "ckplus_clcl": "045dc71330242771",
    "ckplus_phanet": "c180f4750a32eb13",
    "ckplus_mfer": "4730430b1f5f9c33",
    "synthfer_baseline": "cea760c7c8352507",
    "synthfer_hsbs": "1819eb328cd9d76d",
    "synthfer_clcl": "9f527f5b9e8eec97",
    "synthfer_phanet": "a3956256647440a0",
    "synthfer_mfer": "daae4abfc64b24ac",
}


def recipe_digest(config) -> str:
    def canonical(value):
        if isinstance(value, dict):
            return {key: canonical(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [canonical(item) for item in value]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        return value

    values = config.to_dict()
    values.pop("name"), values.pop("out")
    return hashlib.sha256(json.dumps(canonical(values), sort_keys=True).encode()).hexdigest()[:16]


def test_the_shipped_files_cover_every_dataset_and_method():
    assert sorted(path.stem for path in (CONFIGS / "datasets").glob("*.yaml")) == sorted(DATASETS)
    assert sorted(path.stem for path in (CONFIGS / "methods").glob("*.yaml")) == sorted(METHODS)
    assert sorted(path.stem for path in CONFIGS.glob("*_*.yaml")
                  if not path.name.startswith(("compare_", "ablation_"))) == [f"synthfer_{m}" for m in sorted(METHODS)]


@pytest.mark.parametrize("data, method", PAIRS, ids=lambda value: str(value))
def test_a_composition_resolves_to_the_recipe_its_file_held(data, method):
    config = load_config(data=data, method=method)
    assert (config.name, config.out) == (f"{data}_{method}", f"runs/{data}_{method}")
    assert recipe_digest(config) == RECIPE_DIGESTS[f"{data}_{method}"], (
        f"{data} x {method} no longer resolves to the recipe configs/{data}_{method}.yaml held")


@pytest.mark.parametrize("data", DATASETS)
def test_a_composition_is_the_dataset_file_then_the_method_file(data, tmp_path):
    for method in METHODS:
        pair = tmp_path / f"{data}_{method}.yaml"
        pair.write_text(yaml.safe_dump({"include": [str(CONFIGS / "datasets" / f"{data}.yaml"),
                                                    str(CONFIGS / "methods" / f"{method}.yaml")]}))
        composed = load_config(data=data, method=method, overrides=["train.epochs=3"]).to_dict()
        included = load_config(pair, ["train.epochs=3"]).to_dict()
        assert {**composed, "name": "", "out": ""} == {**included, "name": "", "out": ""}


def test_precedence_defaults_dataset_method_overrides(tmp_path):
    (tmp_path / "datasets").mkdir()
    (tmp_path / "methods").mkdir()
    (tmp_path / "datasets" / "toy.yaml").write_text("data: {name: rafdb, input_size: 96}\n"
                                                    "train: {epochs: 3, lr: 0.1}\n")
    (tmp_path / "methods" / "plain.yaml").write_text("model: {name: baseline}\ntrain: {epochs: 7}\n")
    assert recipe_files("toy", "plain", tmp_path) == [tmp_path / "datasets" / "toy.yaml",
                                                      tmp_path / "methods" / "plain.yaml"]
    config = load_config(data="toy", method="plain", configs=tmp_path)
    assert (config.data.input_size, config.model.name) == (96, "baseline")
    assert (config.train.epochs, config.train.lr) == (7, 0.1)          # the method file wins where both set a key
    assert (config.name, config.out) == ("toy_plain", "runs/toy_plain")
    assert load_config(data="toy", method="plain", configs=tmp_path, overrides=["train.epochs=2"]).train.epochs == 2
    (tmp_path / "toy_plain.yaml").write_text("model: {name: hsbs}\n")
    assert recipe_files("toy", "plain", tmp_path) == [tmp_path / "toy_plain.yaml"]   # a full recipe replaces both
    assert load_config(data="toy", method="plain", configs=tmp_path).train.epochs == Config().train.epochs
    with pytest.raises(FileNotFoundError, match="--method takes one of: plain"):
        recipe_files("toy", "fancy", tmp_path)
    with pytest.raises(FileNotFoundError, match="--data takes one of: toy"):
        recipe_files("mnist", "plain", tmp_path)

    config = load_config(data="rafdb", method="hsbs", overrides=["train.epochs=2", "data.root=/data/RAF-DB/basic"])
    assert (config.data.input_size, config.model.name, config.train.epochs) == (224, "hsbs", 2)
    assert config.data.root == "/data/RAF-DB/basic"
    with pytest.raises(ValueError, match="not both"):
        load_config(CONFIGS / "synthfer_hsbs.yaml", data="rafdb", method="hsbs")
    with pytest.raises(ValueError, match="go together"):
        load_config(data="rafdb")


@pytest.mark.parametrize("data, method", PAIRS, ids=lambda value: str(value))
def test_recipe_loads_and_builds_its_model(data, method):
    config = load_config(data=data, method=method)
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
    assert main(["train", "--data", dataset, "--method", "baseline", "--out", str(tmp_path / "run"), *validation,
                 f"data.root={tmp_path / 'copy'}", "data.input_size=48", "train.epochs=1", "train.batch_size=4",
                 "train.eval_batch_size=8", "train.progress=false", f"data.cache_dir={tmp_path / 'cache'}"]) == 0
    report = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert (tmp_path / "run" / "best.pt").is_file()
    assert tuple(report["classes"]) == class_names(load_config(data=dataset, method="baseline").data.num_classes)
    assert 0.0 <= report["accuracy"] <= 1.0


if __name__ == "__main__":
    for data, method in PAIRS:
        print(f'    "{data}_{method}": "{recipe_digest(load_config(data=data, method=method))}",')
