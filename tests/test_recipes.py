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
    "rafdb_baseline": "f77dbbbbb8f026e0",
    "rafdb_hsbs": "d431196d5cd3d0ee",
    "rafdb_clcl": "feda10b381a6739b",
    "rafdb_phanet": "021bb6c355217218",
    "rafdb_mfer": "703b3c947a770397",
    "fer2013_baseline": "f4ddee024d61d3df",
    "fer2013_hsbs": "38f4c739dd2ebf3b",
    "fer2013_clcl": "3c618c581df8a363",
    "fer2013_phanet": "df4c7313307c7e1d",
    "fer2013_mfer": "0169dbd8304f249b",
    "ferplus_baseline": "16fab52a654070d2",
    "ferplus_hsbs": "0c1ad2aa01ab4b06",
    "ferplus_clcl": "c2943f093abaaa3c",
    "ferplus_phanet": "c68ba8e92f76a03e",
    "ferplus_mfer": "86f80bfb58ef5cfb",
    "affectnet7_baseline": "a37a17f540eb03e4",
    "affectnet7_hsbs": "903a708fe20fc427",
    "affectnet7_clcl": "e6ebca690d2f3782",
    "affectnet7_phanet": "2e78c027246adf94",
    "affectnet7_mfer": "095ced6e136aacea",
    "affectnet8_baseline": "4fd9c1ae5cd8b5b2",
    "affectnet8_hsbs": "78dbcfb953b0deab",
    "affectnet8_clcl": "df4cf65000d33d46",
    "affectnet8_phanet": "7f1795a98c2ec1bb",
    "affectnet8_mfer": "209b1821f22e5b90",
    "sfew_baseline": "ffbe7f3469a74a5e",
    "sfew_hsbs": "bb8d062f890e998f",
    "sfew_clcl": "2f4e45455c123b7a",
    "sfew_phanet": "9d4c8ee615c8624b",
    "sfew_mfer": "f28ca731c7e532b5",
    "kdef_baseline": "51aed204238d0660",
    "kdef_hsbs": "c6c4573d77e1f88c",
    "kdef_clcl": "af3f92b168fed8a9",
    "kdef_phanet": "aba378fb2830a260",
    "kdef_mfer": "d5cca5b6484f745c",
    "ckplus_baseline": "e778826901ba4055",
    "ckplus_hsbs": "5b64d533794a2a6f",
    "ckplus_clcl": "911edbda52473f85",
    "ckplus_phanet": "92d7695e6708be53",
    "ckplus_mfer": "616a7992b357d3d7",
    "synthfer_baseline": "d35d1e24c67a53f0",
    "synthfer_hsbs": "f299bb115be0b741",
    "synthfer_clcl": "fc498295a552cc6f",
    "synthfer_phanet": "f67b1cae9b11755a",
    "synthfer_mfer": "85520ca5a052a03c",
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
    assert sorted(path.stem for path in (CONFIGS / "recipes").glob("*.yaml")) == ["fer2013_course", "fer2013_full"]


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
        files = recipe_files(data, method)
        assert files[:2] == [CONFIGS / "datasets" / f"{data}.yaml", CONFIGS / "methods" / f"{method}.yaml"]
        assert files[2:] == ([CONFIGS / "recipes" / f"{data}_course.yaml"] if data == "fer2013" else [])
        pair.write_text(yaml.safe_dump({"include": [str(file) for file in files]}))
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
    with pytest.raises(ValueError, match="toy_plain.yaml is a full recipe of its own"):
        recipe_files("toy", "plain", tmp_path, recipe="course")
    (tmp_path / "toy_plain.yaml").unlink()
    # the dataset's training recipe wins over the method file; --recipe picks another of the dataset's
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "toy_course.yaml").write_text("train: {epochs: 11}\n")
    (tmp_path / "recipes" / "toy_long.yaml").write_text("train: {epochs: 99, lr: 0.5}\n")
    config = load_config(data="toy", method="plain", configs=tmp_path)
    assert (config.train.epochs, config.train.lr, config.name) == (11, 0.1, "toy_plain")
    config = load_config(data="toy", method="plain", configs=tmp_path, recipe="long", overrides=["train.lr=0.2"])
    assert (config.train.epochs, config.train.lr, config.name, config.out) == (99, 0.2, "toy_plain_long",
                                                                              "runs/toy_plain_long")
    with pytest.raises(FileNotFoundError, match="--recipe for toy takes one of: course, long"):
        recipe_files("toy", "plain", tmp_path, recipe="short")
    with pytest.raises(ValueError, match="--recipe names a dataset's training recipe"):
        load_config(recipe="long")
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


# ------------------------------------------------------------------------------ paper-setting recipes
# configs/papers/M_D.yaml = configs/datasets/D.yaml, then configs/papers/M.yaml (the method at its paper's
# setting: 224 px, the released optimiser, schedule, epochs, batch size, augmentation and start).

PAPERS = CONFIGS / "papers"
PAPER_RECIPES = sorted(path.stem for path in PAPERS.glob("*_*.yaml"))
PAPER_DATASETS = ["rafdb", "ferplus", "affectnet7"]

#: lines of the released training scripts (CCLLS train_fs.py; MFER train.py and MFER.py), key by key.
#: data.augment names the policies of the input pipeline ("clcl": flip or noise, then erasing; "none").
RELEASED_LINES = {
    "clcl": {"data.input_size": 224, "data.augment": "clcl", "model.backbone": "resnet18",
             "model.pretrained": "imagenet", "train.optimizer": "adam", "train.lr": 1e-3, "train.weight_decay": 1e-4,
             "train.scheduler": "exponential", "train.gamma": 0.9, "train.epochs": 50, "train.batch_size": 256,
             "train.label_smoothing": 0.0, "model.options.layer_weights": [0.0, 0.1, 0.0, 0.0],
             "model.options.batch_mean": True},
    "mfer": {"data.input_size": 224, "data.augment": "none", "model.backbone": "convnext_base",
             "train.optimizer": "adamw", "train.lr": 1e-3, "train.weight_decay": 0.01, "train.scheduler": "exponential",
             "train.gamma": 0.95, "train.epochs": 100, "train.batch_size": 32, "model.options.drop_path": 0.25,
             "model.options.depthwise": False, "model.options.feature_loss": "dsf",
             "model.options.feature_loss_weight": 1e-3, "model.options.label_smoothing": 0.1},
}


def _dotted(config, key):
    value = config
    for part in key.split("."):
        value = value[part] if isinstance(value, dict) else getattr(value, part)
    return value


def test_paper_recipes_cover_every_method_on_rafdb_ferplus_and_affectnet():
    expected = {f"{method}_{data}" for method in METHODS for data in PAPER_DATASETS} | {"mfer_affectnet8"}
    assert set(PAPER_RECIPES) == expected
    methods_doc = (ROOT / "docs" / "METHODS.md").read_text()
    for method in METHODS:
        assert f"configs/papers/{method}.yaml" in methods_doc, f"docs/METHODS.md does not describe {method}'s recipe"


@pytest.mark.parametrize("stem", PAPER_RECIPES)
def test_a_paper_recipe_is_its_dataset_at_its_method_setting(stem):
    method, data = stem.split("_", 1)
    config = load_config(PAPERS / f"{stem}.yaml")
    dataset = load_config(CONFIGS / "datasets" / f"{data}.yaml").data
    assert (config.name, config.out) == (f"paper_{stem}", f"runs/paper_{stem}")
    assert (config.model.name, config.data.name, config.data.num_classes) == (method, dataset.name, dataset.num_classes)
    assert config.data.input_size == 224 and config.model.pretrained == "imagenet"
    for key, value in RELEASED_LINES.get(method, {}).items():
        assert _dotted(config, key) == value, f"{stem}: {key} is {_dotted(config, key)!r}, released {value!r}"


@pytest.mark.parametrize("method", METHODS)
def test_a_paper_setting_builds_its_model(method):
    # The datasets change only the class count, so one build per method; 64 px instead of 224 keeps it cheap.
    config = load_config(PAPERS / f"{method}_ferplus.yaml", ["data.input_size=64"])
    model = build_model(config, class_names(config.data.num_classes), load_pretrained=False).eval()
    with torch.no_grad():
        out = model(torch.zeros(2, 3, 64, 64))
    assert out.logits.shape == (2, 8)


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
