"""``hsbs bench`` sections that train recipes: the majority-class plateau count and a recipe's training time.
They print numbers (nothing here asserts a speed); what is tested is what they measure and count."""
import math

import numpy as np
import pytest

import fakes
from hsbs_lib.bench import PlateauRun, RecipeTime, plateau_level, plateau_table, prior_entropy, recipe_time
from hsbs_lib.cli import main


def test_the_plateau_level_is_the_entropy_of_the_training_prior():
    assert prior_entropy(np.array([0, 1, 2, 3]), 4) == pytest.approx(math.log(4))
    assert prior_entropy(np.array([5, 5, 5]), 7) == pytest.approx(0.0)
    labels = np.array([0] * 9 + [1])
    assert prior_entropy(labels, 7) == pytest.approx(-(0.9 * math.log(0.9) + 0.1 * math.log(0.1)))
    # a balanced sampler draws both classes equally often: the best constant prediction costs log 2
    assert plateau_level(labels, 7, "balanced") == pytest.approx(math.log(2))
    assert plateau_level(labels, 7, "none") == prior_entropy(labels, 7)


def test_a_run_left_the_plateau_only_below_the_threshold_and_the_table_counts_them():
    left = PlateauRun(65, 0, [1.70, 1.20], plateau=1.65, val_mca=0.5, seconds=10, threshold=0.85)
    stayed = PlateauRun(65, 1, [1.70, 1.60], plateau=1.65, val_mca=0.2, seconds=12, threshold=0.85)
    just_above = PlateauRun(129, 0, [0.85 * 1.65 + 1e-3], plateau=1.65, val_mca=0.2, seconds=30, threshold=0.85)
    assert left.escaped and not stayed.escaped and not just_above.escaped
    table = plateau_table([left, stayed, just_above])
    assert "| 65 px | 1 of 2 |" in table and "| 129 px | 0 of 1 |" in table
    assert "1.20/1.65, 1.60/1.65" in table


def test_recipe_time_trains_the_recipes_first_epoch_and_extrapolates_its_schedule(tmp_path):
    fakes.make_fer2013_csv(tmp_path / "copy")
    timed = recipe_time("fer2013", "baseline", overrides=[f"data.root={tmp_path / 'copy'}", "train.batch_size=4",
                                                          f"data.cache_dir={tmp_path / 'cache'}"])
    assert (timed.name, timed.epochs, len(timed.epoch_seconds)) == ("fer2013_baseline", 50, 1)   # the course recipe
    assert timed.minutes == pytest.approx(timed.epoch_seconds[0] * 50 / 60)
    assert timed.wall_seconds >= timed.epoch_seconds[0] > 0
    assert not (tmp_path / "runs").exists()
    assert RecipeTime("x", 10, [30.0, 90.0], 200.0, 2).minutes == pytest.approx(10.0)


def test_hsbs_bench_recipe_prints_the_schedules_minutes(tmp_path, capsys):
    fakes.make_fer2013_csv(tmp_path / "copy")
    assert main(["bench", f"data.root={tmp_path / 'copy'}", "train.batch_size=4", f"data.cache_dir={tmp_path / 'c'}",
                 "--sections", "recipe", "--recipe", "full", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "## Training time of fer2013_baseline_full (full recipe)" in out
    assert "whole schedule: 150 epochs x" in out
