"""Attention scoring against region masks: energy share, pointing game, tables and the score plot."""
import numpy as np
import pytest
import torch

from hsbs_lib.models.backbones import ResNetBackbone, cell_stride, cells_to_pixels
from hsbs_lib.viz.saliency import (area_share, resize_saliency, attention_score_table, centre_pointing, dilate, energy_inside,
                                   plot_attention_scores, pointing_game, score_saliency)
from hsbs_lib.viz.style import save_figure


def _box_masks(batch=3, size=32):
    """Different rectangles per sample, like SynthFER's mouth/eye regions."""
    masks = torch.zeros(batch, size, size, dtype=torch.bool)
    masks[0, 4:12, 6:20] = True
    masks[1, 20:30, 2:9] = True
    masks[2, 10:14, 10:30] = True
    return masks


def test_saliency_equal_to_mask_scores_exactly_one():
    masks = _box_masks()
    shares = energy_inside(masks.float(), masks)
    assert shares.shape == (3,)
    assert torch.all(shares == 1.0)


def test_uniform_map_scores_the_area_share():
    masks = _box_masks()
    expected = masks.double().mean(dim=(1, 2))
    for grid in (32, 5):  # same grid and a coarse grid resized bilinearly: a constant stays constant
        uniform = torch.full((3, grid, grid), 0.7)
        assert torch.allclose(energy_inside(uniform, masks), expected, atol=1e-6)
    assert torch.allclose(area_share(masks), expected)


def test_negative_saliency_is_clamped_and_zero_map_scores_chance():
    masks = _box_masks()
    signed = torch.where(masks, torch.tensor(2.0), torch.tensor(-5.0))
    assert torch.all(energy_inside(signed, masks) == 1.0)
    zeros = torch.zeros(3, 32, 32)
    assert torch.allclose(energy_inside(zeros, masks), masks.double().mean(dim=(1, 2)))


def test_energy_share_orders_maps_by_how_much_they_look_inside():
    masks = _box_masks()
    generator = torch.Generator().manual_seed(0)
    noise = torch.rand(3, 32, 32, generator=generator)
    focused = noise + 4.0 * masks.float()
    chance = masks.double().mean(dim=(1, 2))
    assert torch.all(energy_inside(focused, masks) > energy_inside(noise, masks))
    assert torch.all(energy_inside(noise, masks) < chance + 0.1)
    assert torch.all((energy_inside(noise, masks) >= 0) & (energy_inside(noise, masks) <= 1))


def test_low_resolution_saliency_is_resized_to_the_mask_grid():
    mask = torch.zeros(1, 32, 32, dtype=torch.bool)
    mask[0, :16, :16] = True
    coarse = torch.zeros(1, 2, 2)
    coarse[0, 0, 0] = 1.0  # the top-left cell of a 2x2 grid
    # A ResNet puts cell (0, 0) of a stride-16 map on pixel (0, 0) and cell (0, 1) on pixel (0, 16): the
    # weight falls to zero at pixel 16, so all of it lies in the top-left quarter.
    assert energy_inside(coarse, mask).item() == pytest.approx(1.0, abs=1e-9)
    assert pointing_game(coarse, mask).tolist() == [True]
    # A plain resize (cells as blocks) spreads the cell over the boundary: per axis 14 of 16 units of
    # weight stay in the top half, so the share is (7/8)^2.
    plain = resize_saliency(coarse, (32, 32), cells="block")
    assert float((plain * mask).sum() / plain.sum()) == pytest.approx(49 / 64, abs=1e-9)


@pytest.mark.parametrize("stem,size", [("no_maxpool", 64), ("standard", 224), ("small", 48), ("no_maxpool", 65),
                                       ("pooled", 65)])
def test_resnet_cells_sit_where_cells_to_pixels_puts_them(stem, size):
    """The centre of a stage cell's receptive field, found by backpropagation, is pixel stride * i."""
    backbone = ResNetBackbone("resnet18", stem=stem, width=16).eval()
    with torch.no_grad():
        for module in backbone.modules():
            if isinstance(module, torch.nn.Conv2d):   # uniform kernels: every receptive field is symmetric
                module.weight.fill_(1.0 / module.weight[0].numel())
    if stem in ("standard", "pooled"):
        # max-pool routes tied gradients to the first element; an average pool of the same geometry does not
        backbone.maxpool = torch.nn.AvgPool2d(kernel_size=3, stride=2, padding=1)
    image = torch.ones(1, 3, size, size, requires_grad=True)
    stages = backbone(image)
    for stage in stages:
        cells = stage.shape[-1]
        index = cells // 2
        image.grad = None
        stage[0, :, index, index].sum().backward(retain_graph=True)
        weight = image.grad[0].abs().sum(0)
        rows = (weight.sum(1) * torch.arange(size)).sum() / weight.sum()
        stride = cell_stride(cells, size)
        assert float(rows) == pytest.approx(stride * index, abs=1.0), (stem, size, cells)
        # cells_to_pixels peaks on the same pixel
        one = torch.zeros(1, cells, cells)
        one[0, index, index] = 1.0
        peak = int(cells_to_pixels(one, (size, size))[0].argmax())
        assert divmod(peak, size) == (stride * index, stride * index)


def test_pointing_game_hits_when_the_peak_is_inside():
    masks = _box_masks()
    saliency = torch.zeros(3, 32, 32)
    saliency[0, 8, 10] = 1.0    # inside box 0
    saliency[1, 25, 5] = 1.0    # inside box 1
    saliency[2, 0, 0] = 1.0     # far outside box 2
    assert pointing_game(saliency, masks).tolist() == [True, True, False]


def test_pointing_game_tolerance_dilates_the_mask():
    mask = torch.zeros(1, 32, 32, dtype=torch.bool)
    mask[0, 10:20, 10:20] = True
    saliency = torch.zeros(1, 32, 32)
    saliency[0, 15, 22] = 1.0   # three pixels right of the box
    assert pointing_game(saliency, mask).tolist() == [False]
    assert pointing_game(saliency, mask, tolerance_px=2).tolist() == [False]
    assert pointing_game(saliency, mask, tolerance_px=3).tolist() == [True]
    # a disk, not a square: the corner at distance sqrt(2) * 3 stays outside a radius of 3
    assert not dilate(mask, 3)[0, 6, 6] and dilate(mask, 3)[0, 7, 10]


def test_score_saliency_joins_regions_and_reports_chance_levels():
    regions = torch.zeros(2, 4, 16, 16, dtype=torch.bool)
    regions[:, 0, 2:4, 2:14] = True    # brows
    regions[:, 3, 11:14, 5:11] = True  # mouth
    union = regions.any(dim=1)
    scores = score_saliency(union.float(), regions, region_names=("brows", "eyes", "nose", "mouth"))
    assert scores["energy_share"] == pytest.approx(1.0)
    assert scores["pointing_hit_rate"] == 1.0
    assert scores["chance_energy_share"] == pytest.approx(union.double().mean().item())
    assert scores["n"] == 2
    brows_area, mouth_area = 2 * 12, 3 * 6
    assert scores["energy_share/brows"] == pytest.approx(brows_area / (brows_area + mouth_area))
    assert scores["energy_share/eyes"] == pytest.approx(0.0)
    assert scores["chance_pointing"] == pytest.approx(scores["chance_energy_share"])


def test_centre_baseline_is_the_pointing_game_of_a_map_peaked_at_the_centre():
    masks = torch.zeros(3, 17, 17, dtype=torch.bool)
    masks[0, 7:10, 6:12] = True      # holds the centre pixel (8, 8)
    masks[1, 12:15, 4:13] = True     # a mouth below the centre
    masks[2, 3:5, 2:15] = True       # brows above it; a tolerance of 4 px reaches the centre
    assert centre_pointing(masks).tolist() == [True, False, False]
    assert centre_pointing(masks, tolerance_px=4).tolist() == [True, True, True]
    # a 5x5 ResNet grid on 17 px (cells on pixels 0, 4, 8, 12, 16) whose middle cell is hottest
    peaked = torch.rand(3, 5, 5) * 0.5
    peaked[:, 2, 2] = 1.0
    assert pointing_game(peaked, masks).tolist() == centre_pointing(masks).tolist()
    scores = score_saliency(peaked, masks)
    assert scores["centre_pointing"] == pytest.approx(1 / 3)
    assert scores["pointing_hit_rate"] == pytest.approx(scores["centre_pointing"])
    # the table carries it beside the area chance, and a uniform map's chance is far below it here
    table = attention_score_table({"centre map": scores})
    assert "| pointing game | chance | centre |" in table.splitlines()[0]
    assert scores["chance_pointing"] < 0.2 and f"| 0.333 | {scores['chance_pointing']:.3f} | 0.333 |" in table


def test_mismatched_batches_are_refused_with_a_readable_error():
    with pytest.raises(ValueError, match="3 maps but the mask has 2"):
        energy_inside(torch.rand(3, 8, 8), torch.ones(2, 8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="region names"):
        score_saliency(torch.rand(1, 8, 8), torch.ones(1, 2, 8, 8, dtype=torch.bool), region_names=("a",))


def test_score_table_and_plot(tmp_path):
    masks = _box_masks()
    generator = torch.Generator().manual_seed(1)
    scores = {
        "baseline": {"layer4": score_saliency(torch.rand(3, 4, 4, generator=generator), masks)},
        "hsbs": {"layer4": score_saliency(masks.float(), masks),
                 "gradcam": score_saliency(torch.rand(3, 32, 32, generator=generator), masks)},
    }
    rows = attention_score_table(scores, markdown=False)
    assert [(row["method"], row["map"]) for row in rows] == [("baseline", "layer4"), ("hsbs", "layer4"),
                                                             ("hsbs", "gradcam")]
    assert rows[1]["energy_share"] == 1.0
    table = attention_score_table(scores)
    assert table.splitlines()[0].startswith("| method | map | energy share")
    assert "| hsbs | layer4 | 1.000 |" in table
    flat = attention_score_table({"uniform": score_saliency(torch.ones(3, 32, 32), masks)})
    assert f"{masks.double().mean().item():.3f}" in flat

    fig = plot_attention_scores(scores)
    chance_lines = [c for ax in fig.axes for c in ax.collections if c.get_linestyle()[0][1] is not None]
    assert chance_lines, "the chance level is drawn as dashed lines"
    # one face in three has a region on the image centre: its baseline line sits at 1/3
    centred = masks.clone()
    centred[2, 15:18, 15:18] = True
    fig = plot_attention_scores({"baseline": {"layer4": score_saliency(torch.rand(3, 4, 4, generator=generator), centred)}})
    energy_axis, pointing_axis = fig.axes[:2]
    centre = 1 / 3
    def drawn_levels(ax):
        return [float(segment[0][1]) for collection in ax.collections for segment in collection.get_segments()]
    # the centre baseline is drawn on the pointing game's panel only, beside its chance line
    assert any(abs(level - centre) < 1e-9 for level in drawn_levels(pointing_axis))
    assert not any(abs(level - centre) < 1e-9 for level in drawn_levels(energy_axis))
    assert "image centre" in [text.get_text() for text in pointing_axis.get_legend().get_texts()]
    png, pdf = save_figure(fig, "attention_scores", tmp_path)
    assert png.stat().st_size > 1000 and pdf.stat().st_size > 1000


def test_numpy_inputs_are_accepted():
    masks = _box_masks().numpy()
    shares = energy_inside(masks.astype(np.float32), masks)
    assert torch.all(shares == 1.0)
