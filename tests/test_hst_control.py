"""The perfect-teacher control for HST: ground-truth teachers (mask, blend, au_mask), the region masks that carry
them through both input pipelines with every flip, and the compare plan configs/control_hst.yaml."""
import csv
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hsbs_lib.config import load_config
from hsbs_lib.constants import IMAGENET_NORMALIZATION
from hsbs_lib.data.base import FERDataset
from hsbs_lib.data.labels import CANONICAL_7
from hsbs_lib.data.pipeline.cache import cache_split
from hsbs_lib.data.pipeline.loaders import DeviceBatchLoader, TransformedDataset, check_extra_targets
from hsbs_lib.data.pipeline.transforms import BatchAugment, BatchMix
from hsbs_lib.data.regions import REGION_BITS, encode_region_bits, region_bit_mask, region_bits_of, regions_union
from hsbs_lib.data.synthfer import REGION_NAMES, expression_regions
from hsbs_lib.data.synthfer.params import ACTION_UNIT_REGIONS, ACTION_UNITS
from hsbs_lib.engine import train
from hsbs_lib.engine.build import build_model, model_extra_targets
from hsbs_lib.engine.compare import load_plan
from hsbs_lib.losses.hst import activation_attention, hst_loss
from hsbs_lib.models import create_model

REPO = Path(__file__).resolve().parents[1]
BRIGHT = 200   # the tests' images are bright exactly where their region bits are set


# ---------------------------------------------------------------- the class-specific ground truth

def test_every_action_unit_names_the_regions_it_moves_and_classes_get_different_regions():
    assert set(ACTION_UNIT_REGIONS) == set(ACTION_UNITS)
    assert all(set(regions) <= set(REGION_NAMES) for regions in ACTION_UNIT_REGIONS.values())
    by_class = {name: expression_regions(name) for name in CANONICAL_7}
    assert by_class["happiness"] == ("eyes", "mouth")           # cheek raise (lower lids) and lip-corner pull
    assert by_class["sadness"] == ("brows", "mouth")            # inner-brow raise and lip-corner depress
    assert by_class["disgust"] == ("brows", "eyes", "nose", "mouth")
    assert by_class["surprise"] == by_class["fear"] == by_class["anger"] == ("brows", "eyes", "mouth")
    assert by_class["neutral"] == REGION_NAMES                  # nothing moves: every region at rest
    assert expression_regions("contempt") == ("mouth",)
    assert len(set(by_class.values())) == 4
    with pytest.raises(ValueError, match="unknown expression"):
        expression_regions("boredom")


def test_region_bits_hold_each_region_in_its_own_bit():
    masks = np.zeros((1, 4, 3, 3), dtype=bool)
    masks[0, 0, 0, :] = True          # brows: the top row
    masks[0, 1, 0, 0] = True          # eyes overlap the brows in one pixel
    masks[0, 3, 2, :] = True          # mouth: the bottom row
    bits = encode_region_bits(masks)
    assert bits.tolist() == [[[3, 1, 1], [0, 0, 0], [8, 8, 8]]]
    assert region_bit_mask(("eyes", "mouth"), REGION_NAMES) == 0b1010
    union = regions_union(torch.from_numpy(bits), region_bit_mask(("eyes", "mouth"), REGION_NAMES))
    assert union.tolist() == [[[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]]
    # a set per sample, e.g. chosen by its class
    two = torch.from_numpy(np.concatenate([bits, bits]))
    per_sample = regions_union(two, torch.tensor([0b0001, 0b1000], dtype=torch.uint8))
    assert per_sample[0, 0].tolist() == [1.0, 1.0, 1.0] and per_sample[1, 0].tolist() == [0.0, 0.0, 0.0]


# ---------------------------------------------------------------- the teachers

def _stages_9px(batch: int = 2, seed: int = 0) -> list[torch.Tensor]:
    """Stage outputs for a 9 px input with a 3x3 layer4 (stride 4: cells on pixels 0, 4, 8)."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(batch, c, s, s, generator=generator) for c, s in ((4, 9), (4, 5), (8, 5), (8, 3))]


def _bits_9px() -> torch.Tensor:
    """Two 9 px faces: brows (bit 0) on rows 0-1, eyes (bit 1) on rows 3-4 columns 3-4, mouth (bit 3) on row 8."""
    bits = torch.zeros(2, 9, 9, dtype=torch.uint8)
    bits[:, 0:2, :] |= 1
    bits[:, 3:5, 3:5] |= 2
    bits[:, 8, 2:7] |= 8
    return bits


def _hand_pooled(mask: torch.Tensor) -> torch.Tensor:
    """The 9 px -> 3x3 pooling written out: teacher cell i averages pixels 0-2, 2-6 and 6-8 (windows of r + 1 = 5
    pixels around pixel 4i, cut at the border, the last one running to the edge)."""
    windows = [range(0, 3), range(2, 7), range(6, 9)]
    return torch.tensor([[float(mask[np.ix_(rows, cols)].mean()) for cols in windows] for rows in windows])


def test_mask_teacher_is_the_union_of_the_regions_pooled_by_hand():
    model = create_model("hsbs", num_classes=7, hst_teacher="mask", bsa=False)
    teacher = model.hst_teacher_map(_stages_9px(), {"label": torch.tensor([3, 4]), REGION_BITS: _bits_9px()})
    union = (_bits_9px()[0] != 0).numpy()
    expected = _hand_pooled(union)
    assert torch.allclose(teacher[0], expected) and torch.allclose(teacher[1], expected)
    # the worked numbers: the middle cell sees the eyes' 4 pixels of its 25; the top row, brows on 2 of 3 rows
    assert expected[1, 1] == pytest.approx(4 / 25) and expected[0, 0] == pytest.approx(2 / 3)
    assert expected[2, 1] == pytest.approx(5 / 15)


def test_au_mask_teacher_keeps_only_the_regions_the_true_class_moves():
    model = create_model("hsbs", num_classes=7, hst_teacher="au_mask", bsa=False)
    happiness, sadness = CANONICAL_7.index("happiness"), CANONICAL_7.index("sadness")
    teacher = model.hst_teacher_map(_stages_9px(), {"label": torch.tensor([happiness, sadness]),
                                                    REGION_BITS: _bits_9px()})
    bits = _bits_9px()[0]
    eyes_and_mouth, brows_and_mouth = ((bits & 0b1010) != 0).numpy(), ((bits & 0b1001) != 0).numpy()
    assert torch.allclose(teacher[0], _hand_pooled(eyes_and_mouth))     # happiness: no brows
    assert torch.allclose(teacher[1], _hand_pooled(brows_and_mouth))    # sadness: no eyes
    assert teacher[0, 0, 0] == 0 and teacher[1, 1, 1] == 0
    assert "class_region_bits" not in model.state_dict()                # checkpoints stay as they were


def test_blend_is_half_the_layer4_map_and_half_the_mask_each_normalised():
    stages = _stages_9px()
    targets = {"label": torch.tensor([0, 1]), REGION_BITS: _bits_9px()}
    blend = create_model("hsbs", num_classes=7, hst_teacher="blend", bsa=False).hst_teacher_map(stages, targets)
    mask = create_model("hsbs", num_classes=7, hst_teacher="mask", bsa=False).hst_teacher_map(stages, targets)
    own = activation_attention(stages[-1])
    expected = 0.5 * F.normalize(own.flatten(1), dim=1) + 0.5 * F.normalize(mask.flatten(1), dim=1)
    assert torch.allclose(blend.flatten(1), expected)


def test_layer3_only_hst_is_weights_0_0_1():
    stages = [stage.requires_grad_() for stage in _stages_9px()]
    layer3_only = hst_loss(stages, weights=(0.0, 0.0, 1.0))
    every_layer, without_layer3 = (float(hst_loss(stages, weights=weights).detach())
                                   for weights in ((1.0, 1.0, 1.0), (1.0, 1.0, 0.0)))
    assert float(layer3_only.detach()) == pytest.approx(every_layer - without_layer3, rel=1e-5)
    grads = torch.autograd.grad(layer3_only, stages, allow_unused=True)
    assert all(g is None or g.abs().sum() == 0 for g in (grads[0], grads[1], grads[3]))
    assert grads[2].abs().sum() > 0


@pytest.mark.parametrize("teacher", ["mask", "blend", "au_mask"])
def test_ground_truth_teachers_train_layer3_and_never_the_teacher(teacher):
    torch.manual_seed(0)
    model = create_model("hsbs", num_classes=7, hst_teacher=teacher, bsa=False, hst_weights=[0, 0, 1],
                         hst_warmup_epochs=0.0, stem="no_maxpool", backbone_width=8).train()
    images = torch.randn(4, 3, 33, 33, generator=torch.Generator().manual_seed(1))
    bits = torch.zeros(4, 33, 33, dtype=torch.uint8)
    bits[:, 8:14, 6:27] = 0b0011          # brows and eyes
    bits[:, 22:27, 10:23] = 0b1000        # mouth
    hst_term = model.loss(model(images), {"label": torch.tensor([0, 3, 4, 6]), REGION_BITS: bits})["hst"]
    assert hst_term > 0
    named = dict(model.named_parameters())
    grads = dict(zip(named, torch.autograd.grad(hst_term, list(named.values()), allow_unused=True)))

    def total(prefix: str) -> float:
        return sum(float(g.abs().sum()) for n, g in grads.items() if n.startswith(prefix) and g is not None)

    assert total("backbone.layer3.") > 0
    assert total("backbone.layer4.") == 0.0 and total("classifier.") == 0.0


def test_a_batch_without_region_masks_is_a_one_line_error_naming_the_option():
    model = create_model("hsbs", num_classes=7, hst_teacher="mask", bsa=False, hst_warmup_epochs=0.0).train()
    with pytest.raises(ValueError, match=r"model\.options\.hst_teacher=mask .*has no region masks") as error:
        model.loss(model(torch.randn(2, 3, 64, 64)), {"label": torch.tensor([0, 1])})
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="hst_mode=deep_to_all"):
        create_model("hsbs", hst_teacher="mask", hst_mode="chain")
    assert create_model("hsbs").extra_targets({"hst_teacher": "mask", "hst": False}) == {}


# ---------------------------------------------------------------- the region masks in the input pipelines

def _bright_where_bits(batch: int = 16, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (B, 3, S, S) and region bits (B, S, S), bright exactly where a bit is set, each sample a
    different asymmetric patch (so a flip moves it)."""
    generator = torch.Generator().manual_seed(seed)
    bits = torch.zeros(batch, size, size, dtype=torch.uint8)
    for index in range(batch):
        top, left = (int(v) for v in torch.randint(0, size // 2, (2,), generator=generator))
        bits[index, top:top + 4, left:left + 6] = 1 << (index % 4)
    images = torch.where(bits[:, None] != 0, BRIGHT, 20).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    return images, bits


def _bright(normalised: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) normalised images -> (B, S, S) bool: where the red channel is above the middle grey."""
    mean, std = IMAGENET_NORMALIZATION["mean"][0], IMAGENET_NORMALIZATION["std"][0]
    return normalised[:, 0] * std + mean > 0.5


def test_a_flipped_image_gets_flipped_region_masks_on_the_device_path():
    images, bits = _bright_where_bits()
    augment = BatchAugment("flip")
    plain, _ = augment(images, None, torch.Generator().manual_seed(3))
    out, _, regions = augment.augment_with_regions(images, None, bits, torch.Generator().manual_seed(3))
    assert torch.equal(out, plain)                                       # no extra random draws
    flipped = torch.tensor([not torch.equal(r, b) for r, b in zip(regions, bits)])
    assert 0 < int(flipped.sum()) < len(bits)                            # some samples flipped, some not
    assert torch.equal(regions[flipped], bits[flipped].flip(-1)) and torch.equal(regions[~flipped], bits[~flipped])
    assert torch.equal(_bright(out), regions != 0)                       # the masks sit on the image's patch


@pytest.mark.parametrize("preset", ["standard", "fer"])
def test_warps_move_the_region_masks_with_the_image(preset):
    images, bits = _bright_where_bits(size=32)
    augment = BatchAugment(preset)
    plain, _ = augment(images, None, torch.Generator().manual_seed(4))
    out, _, regions = augment.augment_with_regions(images, None, bits, torch.Generator().manual_seed(4))
    assert torch.equal(out, plain)
    assert set(regions.unique().tolist()) <= {0, 1, 2, 4, 8}             # nearest neighbour: bits stay bits
    # bilinear images and nearest masks disagree at most on the patch's border pixels
    agreement = (_bright(out) == (regions != 0)).float().mean()
    assert agreement > 0.97, float(agreement)


class BrightPatches(FERDataset):
    """Images bright where their region masks are (one region per sample), masks (N, 4, S, S) as SynthFER's."""

    name = "patches"
    needs_root = False

    def __init__(self, n: int = 12, size: int = 16, with_masks: bool = True):
        super().__init__(None, "train")
        images, bits = _bright_where_bits(n, size)
        self.images = images.permute(0, 2, 3, 1).numpy().copy()
        if with_masks:
            self.masks = np.stack([(bits.numpy() >> r) & 1 for r in range(4)], axis=1).astype(bool)
        self.samples = [(f"patches/{i}", i % 7) for i in range(n)]

    def load_image(self, index):
        return self.images[index]


def test_a_flipped_image_gets_flipped_region_masks_on_the_loader_path():
    data = BrightPatches()
    bits = region_bits_of(data)
    with_regions = TransformedDataset(data, size=16, augment="flip", seed=0, region_bits=bits)
    without = TransformedDataset(data, size=16, augment="flip", seed=0)
    flips = []
    for index in range(len(data)):
        image, target = with_regions[index]
        assert torch.equal(image, without[index][0])
        regions = target[REGION_BITS]
        assert regions.dtype == torch.uint8 and torch.equal(_bright(image[None])[0], regions != 0)
        flips.append(not torch.equal(regions, torch.from_numpy(bits[index])))
        if flips[-1]:
            assert torch.equal(regions, torch.from_numpy(bits[index]).flip(-1))
    assert 0 < sum(flips) < len(flips)


def test_the_device_loader_carries_region_masks_only_when_asked():
    data = BrightPatches()
    split = cache_split(data, 16)
    assert REGION_BITS not in next(iter(DeviceBatchLoader(split, batch_size=4)))[1]
    with_bits = dataclasses.replace(split, region_bits=region_bits_of(data, 16))
    images, targets = next(iter(DeviceBatchLoader(with_bits, batch_size=12, shuffle=True, augment="flip", seed=1)))
    assert targets[REGION_BITS].shape == (12, 16, 16)
    assert torch.equal(_bright(images), targets[REGION_BITS] != 0)
    # the stored split is never flipped in place
    assert np.array_equal(with_bits.region_bits, region_bits_of(data, 16))


def test_cutmix_pastes_the_partner_s_regions_with_its_pixels_and_mixup_keeps_both():
    images, bits = _bright_where_bits(8)
    normalised = images.float()
    targets = {"label": torch.arange(8) % 7, REGION_BITS: bits}
    mixed, mixed_targets = BatchMix(7, cutmix=1.0)(normalised, targets, torch.Generator().manual_seed(0))
    assert torch.equal(mixed > 100, mixed_targets[REGION_BITS][:, None].expand(-1, 3, -1, -1) != 0)
    _, mixup_targets = BatchMix(7, mixup=1.0)(normalised, targets, torch.Generator().manual_seed(0))
    assert torch.equal(mixup_targets[REGION_BITS] & bits, bits)          # every face's own regions still there


def test_data_without_region_masks_is_refused_before_training_naming_the_option(tmp_path):
    check_extra_targets(BrightPatches(), {REGION_BITS: "model.options.hst_teacher=mask"})
    with pytest.raises(ValueError) as error:
        check_extra_targets(BrightPatches(with_masks=False), {REGION_BITS: "model.options.hst_teacher=mask"})
    assert str(error.value) == ("model.options.hst_teacher=mask needs the expression's region masks, but dataset "
                                "'patches' has no region masks (only SynthFER renders them)")
    config = _tiny_config(tmp_path, ["model.name=hsbs", "model.options.hst_teacher=au_mask", "data.input_size=16"])
    assert model_extra_targets(config) == {REGION_BITS: "model.options.hst_teacher=au_mask"}
    with pytest.raises(ValueError, match=r"hst_teacher=au_mask needs .* 'patches' has no region masks"):
        train.fit(config, train_data=BrightPatches(with_masks=False))
    assert not (tmp_path / "run" / "config.yaml").exists()               # refused before the run folder is written


# ---------------------------------------------------------------- the compare plan

TINY = ["data.input_size=33", "data.n_train=16", "data.n_val=8", "data.n_test=8", "model.backbone_width=8",
        "train.epochs=1", "train.batch_size=8", "train.max_steps_per_epoch=1", "train.progress=false",
        "train.threads=1", "train.record_intensity=false", "train.device=cpu"]


def _tiny_config(tmp_path, overrides):
    # the plan's own budget (train.epochs=16) first, so that the tiny settings win
    plan_first = [o for o in overrides if o.startswith("train.epochs=")]
    rest = [o for o in overrides if o not in plan_first]
    return load_config(REPO / "configs" / "synthfer_baseline.yaml",
                       [*plan_first, *TINY, *rest, f"out={tmp_path / 'run'}"])


def test_control_plan_rows_build_the_models_they_name():
    plan = load_plan(REPO / "configs" / "control_hst.yaml")
    assert plan.reference_row() == "baseline"
    teachers = {}
    for row, overrides in plan.rows.items():
        config = load_config(REPO / plan.base, [*plan.overrides, *overrides])
        assert (config.data.name, config.data.input_size, config.model.backbone_width) == ("synthfer", 65, 32), row
        model = build_model(config, CANONICAL_7)
        if row == "baseline":
            assert config.model.name == "baseline"
            continue
        assert model.bsa is None and model.hst.weights == (0.0, 0.0, 1.0), row
        teachers[row] = model.hst_teacher
    assert sorted(teachers.values()) == ["activation", "au_mask", "blend", "mask"]


@pytest.mark.parametrize("row", ["baseline", "HST layer3 (layer4 teacher)", "HST layer3 (GT mask)",
                                 "HST layer3 (blend)", "HST layer3 (AU mask)"])
def test_each_control_row_trains_one_step(tmp_path, row):
    plan = load_plan(REPO / "configs" / "control_hst.yaml")
    hst = row != "baseline"
    # the ramp off, so the one step's HST term is not multiplied by 0; the GT mask on the DataLoader path too
    extra = ["model.options.hst_warmup_epochs=0"] if hst else []
    if row == "HST layer3 (GT mask)":
        extra.append("data.pipeline=loader")
    config = _tiny_config(tmp_path, [*plan.overrides, *plan.rows[row], *extra])
    train.fit(config)
    with open(tmp_path / "run" / "metrics.csv", newline="") as file:
        metrics = list(csv.DictReader(file))
    assert len(metrics) == 1 and float(metrics[0]["loss/ce"]) > 0
    if hst:
        assert float(metrics[0]["loss/hst"]) > 0
    else:
        assert "loss/hst" not in metrics[0]
