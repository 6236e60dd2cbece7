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
    "rafdb_baseline": "443ceae47e5776fd",
    "rafdb_hsbs": "3ef066ee5580d639",
    "rafdb_clcl": "662b1627abce45df",
    "rafdb_phanet": "1a441d8315f406cd",
    "rafdb_mfer": "67bd53a8e4c77532",
    "fer2013_baseline": "8f42669a1a72f930",
    "fer2013_hsbs": "bf4d685490b7172d",
    "fer2013_clcl": "80f9e0b3651fdccc",
    "fer2013_phanet": "03c01f4101a52a71",
    "fer2013_mfer": "742393065eb73786",
    "ferplus_baseline": "b90b4168572d70d1",
    "ferplus_hsbs": "0a32d8cd6cfa7f9b",
    "ferplus_clcl": "e16c66eaf7372965",
    "ferplus_phanet": "3a0a51422e844370",
    "ferplus_mfer": "dd6ab5895437975d",
    "affectnet7_baseline": "445904a0ec318755",
    "affectnet7_hsbs": "2fafd6e1e284b95a",
    "affectnet7_clcl": "790ac4ef263aedc6",
    "affectnet7_phanet": "6baf1e50485001ae",
    "affectnet7_mfer": "3064d1330bf57515",
    "affectnet8_baseline": "1f4cd19584fd9b20",
    "affectnet8_hsbs": "b86bfd81cff38bc8",
    "affectnet8_clcl": "cf0033dcba90fb44",
    "affectnet8_phanet": "731d6038f192574b",
    "affectnet8_mfer": "731e2d14bd59686e",
    "sfew_baseline": "1d79e07bc4d88757",
    "sfew_hsbs": "2e6bbea43fad00d4",
    "sfew_clcl": "415aaca63bccf7f8",
    "sfew_phanet": "12000fb54b09dd74",
    "sfew_mfer": "a458cd7b96e92a7b",
    "kdef_baseline": "e894aeb567b4fa56",
    "kdef_hsbs": "bb9787d49943c980",
    "kdef_clcl": "eb5ec3b2c197fcd7",
    "kdef_phanet": "ae71bed7793265ff",
    "kdef_mfer": "a3d6b296780c94d7",
    "ckplus_baseline": "77e6bc166fc918f7",
    "ckplus_hsbs": "c37e4f73e7424150",
    "ckplus_clcl": "6954c7ea643db410",
    "ckplus_phanet": "1ae602639cacaa68",
    "ckplus_mfer": "5581c26b146ad1fd",
    "synthfer_baseline": "839f2f795fda7e16",
    "synthfer_hsbs": "400c491eff60498c",
    "synthfer_clcl": "6053aaeb55a10806",
    "synthfer_phanet": "ed23e3be037c684f",
    "synthfer_mfer": "60ebc77a51373e60",
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
    plans = ("compare_", "ablation_", "variants_", "control_")     # comparison plans, not recipes
    assert sorted(path.stem for path in CONFIGS.glob("*_*.yaml")
                  if not path.name.startswith(plans)) == [f"synthfer_{m}" for m in sorted(METHODS)]
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
