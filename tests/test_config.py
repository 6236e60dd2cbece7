"""Configs: defaults, YAML, dotted overrides, unknown keys, the shipped SynthFER recipes."""
import copy
from pathlib import Path

import pytest
import yaml

from hsbs_lib.config import Config, apply_overrides, config_from_dict, load_config, resolved_stem
from hsbs_lib.data.labels import class_names
from hsbs_lib.engine.build import build_model
from hsbs_lib.engine.compare import load_plan
from hsbs_lib.models.registry import list_models

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def test_yaml_then_overrides_merge_over_the_defaults(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"data": {"n_train": 100}, "model": {"options": {"hst": True, "lambda_hst": 500}},
                                      "train": {"epochs": 3, "lr": 0.01}}))
    config = load_config(recipe, ["train.epochs=5", "model.options.bsa=false", "model.pretrained=null",
                                  "train.grad_clip=1.5", "data.augment=flip"])
    assert config.train.epochs == 5 and config.train.lr == 0.01              # override beats YAML beats default
    assert config.data.n_train == 100 and config.data.n_test == Config().data.n_test
    assert config.model.options == {"hst": True, "lambda_hst": 500, "bsa": False}   # option dicts merge
    assert config.model.pretrained is None and config.train.grad_clip == 1.5 and config.data.augment == "flip"
    assert config_from_dict(config.to_dict()) == config


def test_unknown_keys_and_malformed_overrides_are_readable_errors(tmp_path):
    with pytest.raises(KeyError, match="unknown config key 'train.epoch'"):
        apply_overrides(Config(), ["train.epoch=3"])
    with pytest.raises(KeyError, match="unknown config key 'trian'"):
        apply_overrides(Config(), ["trian.epochs=3"])
    with pytest.raises(ValueError, match="section.key=value"):
        apply_overrides(Config(), ["train.epochs"])
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("train:\n  learning_rate: 0.1\n")
    with pytest.raises(KeyError, match="train.learning_rate"):
        load_config(recipe)
    with pytest.raises(FileNotFoundError, match="nowhere.yaml"):
        load_config(tmp_path / "nowhere.yaml")


@pytest.mark.parametrize("name, model", [("synthfer_baseline", "baseline"), ("synthfer_hsbs", "hsbs")])
def test_shipped_synthfer_recipes(name, model):
    config = load_config(CONFIGS / f"{name}.yaml")
    assert config.model.name == model and model in list_models()
    assert (config.data.name, config.data.input_size, config.data.n_train, config.data.n_test) == ("synthfer", 65, 4000, 1000)
    t = config.train
    assert (t.batch_size, t.optimizer, t.lr, t.weight_decay, t.scheduler, t.epochs) == (64, "adamw", 1e-3, 1e-4, "cosine", 8)
    assert (config.model.backbone, config.model.stem, config.model.backbone_width) == ("resnet18", "auto", 32)
    assert resolved_stem(config) == "pooled"              # at 65 px
    if model == "hsbs":
        assert config.model.options["hst"] and config.model.options["bsa"]
        # the measured SynthFER setting (docs/BENCHMARKS.md): 0.8 per teacher cell, ramped in over 2 epochs
        model = build_model(config, class_names(7))
        assert model.hst.scale(25) == pytest.approx(20.0) and model.hst.warmup_epochs == 2
        # the HSBS demo run and the compare/ablation rows named after it must train the same model
        for plan_name in ("compare_synthfer.yaml", "ablation_hsbs.yaml"):
            plan = load_plan(CONFIGS / plan_name)
            row = build_model(load_config(REPO / plan.base, [*plan.overrides, *plan.rows["hsbs"]]), class_names(7))
            assert repr(row) == repr(model), plan_name


def test_the_finer_teacher_ablation_changes_only_the_network():
    """configs/ablation_hsbs_fine.yaml: the demo recipe with a 9x9 layer4 grid at 65 px, HST at several weights."""
    plan = load_plan(CONFIGS / "ablation_hsbs_fine.yaml")
    demo = load_config(CONFIGS / "synthfer_baseline.yaml").to_dict()
    models = {}
    for row, overrides in plan.rows.items():
        config = load_config(REPO / plan.base, [*plan.overrides, *overrides])
        values = config.to_dict()
        assert values["data"] == demo["data"] and values["train"] == demo["train"], row
        model = build_model(config, class_names(7))
        assert model.backbone.stage_sizes(65) == (65, 33, 17, 9), row
        models[row] = model
    assert models["+HST"].hst.scale(81) == pytest.approx(20.0) and models["+HST"].bsa is None
    assert models["+HST"].hst.scale(49) == pytest.approx(20.0)      # the 7x7 grid at 49 px
    for row, weight in (("+HST(lambda 65)", 65.0), ("+HST(lambda 39)", 39.0), ("+HST(lambda 20)", 20.0)):
        assert models[row].hst.scale(81) == pytest.approx(weight) and models[row].bsa is None, row
    assert models["baseline"].backbone.stage_sizes(49) == (49, 25, 13, 7)


def test_values_are_coerced_to_the_field_type(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("train:\n  lr: 3e-4\n  warmup_epochs: 1\n  epochs: 4.0\ndata:\n  train_split: 2019\n")
    config = load_config(recipe, ["train.weight_decay=5e-5", "train.grad_clip=1", "train.amp=no", "train.epochs='6'",
                                  "data.root=/data/my copy #2: RAF-DB", "model.pretrained=\"~/weights/resnet18.pt\"",
                                  "data.max_train_per_class=null", "model.options.lambda_hst=1e3",
                                  "data.options={fold: 2, n_folds: 5}"])
    t = config.train
    assert (t.lr, t.weight_decay, t.warmup_epochs, t.grad_clip) == (3e-4, 5e-5, 1.0, 1.0)
    assert all(isinstance(v, float) for v in (t.lr, t.weight_decay, t.warmup_epochs, t.grad_clip))
    assert t.amp is False and t.epochs == 6 and isinstance(t.epochs, int)
    assert config.data.root == "/data/my copy #2: RAF-DB"          # a path as written, no quoting needed
    assert config.data.train_split == "2019" and config.data.max_train_per_class is None
    assert config.model.pretrained == "~/weights/resnet18.pt"       # quotes around a value are removed
    assert config.model.options["lambda_hst"] == 1000.0 and config.data.options == {"fold": 2, "n_folds": 5}


@pytest.mark.parametrize("override, expected", [
    ("train.epochs=five", "'train.epochs' expects an integer, got 'five'"),
    ("train.epochs=2.5", "'train.epochs' expects an integer, got 2.5"),
    ("train.lr=fast", "'train.lr' expects a number, got 'fast'"),
    ("train.amp=maybe", "'train.amp' expects true or false, got 'maybe'"),
    ("train.grad_clip=[1]", "'train.grad_clip' expects a number or null, got [1]"),
    ("data.options=3", "'data.options' expects a mapping, got 3"),
])
def test_a_value_that_cannot_be_coerced_names_key_value_and_type(override, expected):
    with pytest.raises(ValueError) as error:
        apply_overrides(Config(), [override])
    assert expected in str(error.value)


def test_auto_stem_follows_the_input_size_and_runs_record_the_stem_it_stood_for():
    from hsbs_lib.config import AUTO_STEM_MAX_INPUT, auto_stem, resolved_stem, same_recipe, validate_config
    from hsbs_lib.models.backbones import stage_sizes

    assert auto_stem(65) == auto_stem(AUTO_STEM_MAX_INPUT) == "pooled"
    assert auto_stem(AUTO_STEM_MAX_INPUT + 1) == auto_stem(129) == auto_stem(225) == "standard"
    # the rule's purpose: layer4 keeps at most 6x6 cells up to the threshold, 5x5 at 129 px
    assert stage_sizes(65, stem=auto_stem(65))[-1] == 5
    assert stage_sizes(AUTO_STEM_MAX_INPUT, stem=auto_stem(AUTO_STEM_MAX_INPUT))[-1] == 6
    assert stage_sizes(129, stem=auto_stem(129))[-1] == 5
    config = load_config(None, ["model.stem=auto", "data.input_size=129"], data="synthfer", method="baseline")
    assert config.model.stem == "auto" and resolved_stem(config) == "standard"
    stored = validate_config(copy.deepcopy(config))          # what fit writes into the run folder
    assert stored.model.stem == "standard"
    assert same_recipe(stored, config)                          # a finished run is found again
    other = load_config(None, ["model.stem=no_maxpool", "data.input_size=129"], data="synthfer", method="baseline")
    assert not same_recipe(stored, other)


def test_an_unknown_stem_names_auto_as_a_config_choice():
    from hsbs_lib.models import create_model

    with pytest.raises(ValueError, match="unknown stem 'tiny'.*auto"):
        create_model("baseline", stem="tiny")
