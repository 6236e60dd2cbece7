"""Attention scores at one resolution: the one-cell pointing game, maps pooled to the teacher's grid and the
teacher upsampled to each student's grid, and how they reach the diagnostics report and the compare tables.

Geometry of every hand-built case: a 65 px image and ResNet grids whose cell i sits on pixel s*i (stride s):
a 5x5 teacher (s = 16, cells on pixels 0, 16, 32, 48, 64, each standing for the pixels within 8 of it) and a
9x9 student (s = 8, cells on 0, 8, ..., 64, each standing for the pixels within 4 of it).
"""
import json
import math

import pytest
import torch

from hsbs_lib.engine import compare
from hsbs_lib.engine.saliency import (centre_pointing_on_grid, chance_pointing_on_grid, mask_on_grid, pointing_game,
                                      pointing_game_on_grid, score_equal_resolution, score_saliency,
                                      teacher_on_student_grid)
from hsbs_lib.losses.hst import pool_to_teacher_grid

SIZE = 65


def _mask(rows: slice, cols: slice) -> torch.Tensor:
    mask = torch.zeros(1, SIZE, SIZE, dtype=torch.bool)
    mask[0, rows, cols] = True
    return mask


def _one_hot(grid: int, row: int, col: int) -> torch.Tensor:
    maps = torch.zeros(1, grid, grid)
    maps[0, row, col] = 1.0
    return maps


# the expression sits around pixel (32, 32): inside teacher cell (2, 2)'s pixels (24..40) and no other's
CENTRE_MASK = _mask(slice(28, 37), slice(28, 37))
# a smaller one, inside student cell (4, 4)'s pixels (28..36) and no other student cell's
SMALL_MASK = _mask(slice(31, 34), slice(31, 34))


def test_mask_on_grid_marks_the_cells_whose_pixels_touch_the_mask():
    on_teacher = mask_on_grid(CENTRE_MASK, (5, 5))[0]
    assert on_teacher.nonzero().tolist() == [[2, 2]]
    # on the 9x9 grid the same pixels reach cells 3..5 (cell 3 stands for pixels 20..28, cell 5 for 36..44)
    on_student = mask_on_grid(CENTRE_MASK, (9, 9))[0]
    assert on_student.nonzero().tolist() == [[r, c] for r in (3, 4, 5) for c in (3, 4, 5)]
    assert mask_on_grid(SMALL_MASK, (9, 9))[0].nonzero().tolist() == [[4, 4]]


def test_a_peak_one_cell_off_the_mask_misses_without_tolerance_and_hits_with_one_cell():
    one_off = _one_hot(5, 2, 3)                    # the cell right of the mask's
    assert pointing_game_on_grid(one_off, CENTRE_MASK, tolerance_cells=0).tolist() == [False]
    assert pointing_game_on_grid(one_off, CENTRE_MASK, tolerance_cells=1).tolist() == [True]
    assert pointing_game(one_off, CENTRE_MASK).tolist() == [False]   # the pixel game: pixel (32, 48) is outside
    diagonal = _one_hot(5, 3, 3)                   # diagonal neighbours are one cell away too (a square, not a disk)
    assert pointing_game_on_grid(diagonal, CENTRE_MASK, tolerance_cells=1).tolist() == [True]
    two_off = _one_hot(5, 2, 4)
    assert pointing_game_on_grid(two_off, CENTRE_MASK, tolerance_cells=1).tolist() == [False]
    assert pointing_game_on_grid(two_off, CENTRE_MASK, tolerance_cells=2).tolist() == [True]


def test_one_cell_scores_come_with_their_chance_and_centre_levels():
    # the grown mask is the 3x3 block of cells around (2, 2): 9 of 25 cells, the middle one among them
    assert chance_pointing_on_grid(CENTRE_MASK, (5, 5)).tolist() == [pytest.approx(9 / 25)]
    assert centre_pointing_on_grid(CENTRE_MASK, (5, 5)).tolist() == [True]
    corner = _mask(slice(0, 3), slice(0, 3))       # only cell (0, 0): its grown block of 4 misses the middle
    assert chance_pointing_on_grid(corner, (5, 5)).tolist() == [pytest.approx(4 / 25)]
    assert centre_pointing_on_grid(corner, (5, 5)).tolist() == [False]
    scores = score_saliency(_one_hot(5, 2, 3), CENTRE_MASK)
    assert scores["pointing_hit_rate"] == 0.0 and scores["pointing_hit_rate_1cell"] == 1.0
    assert scores["chance_pointing_1cell"] == pytest.approx(9 / 25) and scores["centre_pointing_1cell"] == 1.0


def test_pooling_a_student_to_the_teacher_grid_changes_its_pointing_as_computed_by_hand():
    """A 9x9 student with one hot cell on the expression and a broad warm patch below-right of it.

    Own grid: the hot cell (4, 4), pixel (32, 32), is the peak: a hit. Pooled to 5x5 (teacher cell i averages
    student cells 2i - 1 .. 2i + 1): teacher cell (2, 2) holds the hot cell alone, 1/9 = 0.11; teacher cell
    (3, 3) holds the whole patch, 4 * 0.9 / 9 = 0.4, and becomes the peak: pixel (48, 48), a miss, one teacher
    cell off the mask, so a hit again with a one-cell tolerance.
    """
    student = _one_hot(9, 4, 4)
    student[0, 6:8, 6:8] = 0.9
    pooled = pool_to_teacher_grid(student, (5, 5))
    assert pooled[0, 2, 2] == pytest.approx(1 / 9) and pooled[0, 3, 3] == pytest.approx(0.4)
    scores = score_equal_resolution({"layer3": student, "layer4": _one_hot(5, 2, 2)}, CENTRE_MASK)
    assert pointing_game(student, CENTRE_MASK).tolist() == [True]
    assert scores["layer3"]["teacher_grid_pointing_hit_rate"] == 0.0
    assert scores["layer3"]["teacher_grid_pointing_hit_rate_1cell"] == 1.0
    # the teacher itself: pooling onto its own grid changes nothing
    assert scores["layer4"]["teacher_grid_pointing_hit_rate"] == 1.0
    assert scores["layer4"]["teacher_upsampled_pointing_hit_rate"] == 1.0


def test_a_teacher_upsampled_to_a_finer_grid_is_held_to_that_grid_s_one_cell():
    """A 5x5 teacher peaked one teacher cell right of the expression: a one-cell hit on its own grid. Upsampled
    onto the 9x9 grid its peak is student cell (4, 6), two student cells from the mask's (4, 4): a miss."""
    teacher = _one_hot(5, 2, 3)
    upsampled = teacher_on_student_grid(teacher, (9, 9))
    assert upsampled[0].flatten().argmax().item() == 4 * 9 + 6
    assert upsampled[0, 4, 5] == pytest.approx(0.5) and upsampled[0, 4, 7] == pytest.approx(0.5)
    student = torch.rand(1, 9, 9, generator=torch.Generator().manual_seed(0))
    scores = score_equal_resolution({"layer3": student, "layer4": teacher}, SMALL_MASK)
    assert score_saliency(teacher, SMALL_MASK)["pointing_hit_rate_1cell"] == 1.0
    assert scores["layer3"]["teacher_upsampled_pointing_hit_rate_1cell"] == 0.0
    # where the grids nest, bilinear upsampling keeps the surface: energy share and pixel game as the teacher's
    own = score_saliency(teacher, SMALL_MASK)
    assert scores["layer3"]["teacher_upsampled_energy_share"] == pytest.approx(own["energy_share"], abs=1e-6)
    assert scores["layer3"]["teacher_upsampled_pointing_hit_rate"] == own["pointing_hit_rate"]


def test_a_uniform_map_scores_the_area_share_pooled_or_upsampled():
    uniform = {"layer3": torch.full((1, 9, 9), 0.3), "layer4": torch.full((1, 5, 5), 2.0)}
    area = CENTRE_MASK.double().mean().item()
    for layer, scores in score_equal_resolution(uniform, CENTRE_MASK).items():
        assert scores["teacher_grid_energy_share"] == pytest.approx(area), layer
        assert scores["teacher_upsampled_energy_share"] == pytest.approx(area), layer
    with pytest.raises(KeyError, match="layer4"):
        score_equal_resolution({"layer3": uniform["layer3"]}, CENTRE_MASK)


def _report(share: float, one_cell: float, pooled: float, upsampled: float) -> dict:
    layer = {"energy_share": share, "pointing_hit_rate": 0.5, "outer_ring_share": 0.1, "centre_pointing": 0.64,
             "pointing_hit_rate_1cell": one_cell, "chance_pointing_1cell": 0.3, "centre_pointing_1cell": 0.9,
             "teacher_grid_energy_share": share, "teacher_grid_pointing_hit_rate": pooled,
             "teacher_grid_pointing_hit_rate_1cell": pooled, "teacher_upsampled_energy_share": share,
             "teacher_upsampled_pointing_hit_rate": upsampled, "teacher_upsampled_pointing_hit_rate_1cell": upsampled}
    return {"accuracy": 0.8, "mean_class_accuracy": 0.7, "macro_f1": 0.7, "per_class_recall": {},
            "diagnostics": {"attention": {"layer3": layer}}}


def test_compare_tabulates_the_equal_resolution_scores_with_paired_differences():
    results = {"baseline": {0: _report(0.1, 0.5, 0.4, 0.3), 1: _report(0.1, 0.7, 0.4, 0.3)},
               "control": {0: _report(0.2, 0.8, 0.6, 0.3), 1: _report(0.2, 0.8, 0.8, 0.3)}}
    summaries = compare.summarise(results, reference="baseline")
    control = summaries[1]
    assert control["layer3_pointing_hit_rate_1cell_mean"] == pytest.approx(0.8)
    assert control["layer3_pointing_hit_rate_1cell_diff"] == pytest.approx(0.2)
    assert control["layer3_teacher_grid_pointing_hit_rate_diff"] == pytest.approx(0.3)
    # the centre baseline on each grid is a property of the masks: tabulated, never differenced
    assert control["centre_pointing_1cell_layer3_mean"] == pytest.approx(0.9)
    assert not any(key.startswith("centre_pointing_1cell") and key.endswith("_diff") for key in control)
    table = compare.format_diagnostics_table(summaries, "baseline")
    # today's table is unchanged; the new ones follow it
    assert "| control | 0.200 ± 0.000 / 0.500 ± 0.000 / 0.100 ± 0.000 |" in table
    assert "a map peaked at its middle cell scores layer3 0.900" in table
    assert "One-cell pointing on the stage's own grid:" in table and "| control | 0.800 ± 0.000 |" in table
    assert "| row | layer3 energy / pointing / 1-cell |" in table
    assert "| control | 0.200 ± 0.000 / 0.700 ± 0.141 / 0.700 ± 0.141 |" in table
    assert "| control | +0.200 [" in table and "| control | +0.100 [" in table


def test_reports_without_the_new_scores_still_tabulate():
    old = {"accuracy": 0.8, "mean_class_accuracy": 0.7, "macro_f1": 0.7, "per_class_recall": {},
           "diagnostics": {"attention": {"layer1": {"energy_share": 0.1, "pointing_hit_rate": 0.5,
                                                    "outer_ring_share": 0.1}}}}
    summaries = compare.summarise({"baseline": {0: old}, "b": {0: old}}, reference="baseline")
    table = compare.format_diagnostics_table(summaries, "baseline")
    assert "layer1 energy / pointing / ring" in table and "One-cell pointing" not in table
    assert math.isclose(summaries[1]["layer1_energy_share_mean"], 0.1)


def test_diagnostics_report_carries_the_new_keys_beside_the_old(tmp_path):
    """A one-step SynthFER run at 33 px (grids 17, 9, 5, 3): every layer's report has today's keys and the new ones."""
    from hsbs_lib.config import load_config
    from hsbs_lib.engine import train
    from hsbs_lib.engine.diagnostics import DIAGNOSTICS_VERSION, format_diagnostics, run_diagnostics

    config = load_config("configs/synthfer_baseline.yaml", [
        "data.input_size=33", "data.n_train=16", "data.n_val=8", "data.n_test=8", "model.backbone_width=8",
        "train.epochs=1", "train.batch_size=8", "train.max_steps_per_epoch=1", "train.progress=false",
        "train.threads=1", "train.record_intensity=false", "train.device=cpu", f"out={tmp_path / 'run'}"])
    train.fit(config)
    report = run_diagnostics(tmp_path / "run", n=8)
    assert report["version"] == DIAGNOSTICS_VERSION
    for layer in ("layer1", "layer2", "layer3", "layer4"):
        scores = report["attention"][layer]
        assert {"energy_share", "pointing_hit_rate", "outer_ring_share", "centre_pointing"} <= set(scores)
        assert {*compare.EQUAL_RESOLUTION_SCORES, "chance_pointing_1cell", "centre_pointing_1cell"} <= set(scores)
    layer4 = report["attention"]["layer4"]
    assert layer4["teacher_grid_energy_share"] == pytest.approx(layer4["energy_share"])
    assert "pooled to layer4's grid" in format_diagnostics(report)
    # a cached report from before the new scores is computed again, not reused without them
    cached = tmp_path / "run" / "diagnostics-test-8.json"
    stale = {**report, "version": 1, "attention": {"layer1": {"energy_share": 0.0}}}
    cached.write_text(json.dumps(stale))
    assert "pointing_hit_rate_1cell" in run_diagnostics(tmp_path / "run", n=8)["attention"]["layer1"]
