"""HSBS variants a reviewer asks for: late, moving-average, frozen and SAD-direction HST teachers; BSA's prototype
memory, masked diagonal and its own head or stop-gradient; their resume and the compare config's rows."""
from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hsbs_lib.engine.build import build_model
from hsbs_lib.engine.compare import format_minority_runs, load_plan, load_plan_config, run_overrides, summarise
from hsbs_lib.engine.train import train_one_epoch
from hsbs_lib.losses.bsa import BatchSimilarityAttention, same_label_targets, similarity_supervision_loss
from hsbs_lib.losses.hst import HSTLoss, activation_attention, hst_loss, upsample_to_student_grid
from hsbs_lib.models import create_model
from hsbs_lib.models.hst_teachers import MovingAverageTeacher, frozen_copy, mean_teacher_decay

LABELS = torch.tensor([0, 1, 2, 1])
#: a narrow network at 33 px (layer1..4: 17, 9, 5, 3 cells), so a step costs milliseconds on one core
TINY = {"backbone_width": 8, "stem": "no_maxpool"}


def _images(batch: int = 4, size: int = 33, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _hsbs(seed: int = 0, **options):
    """A tiny HSBS with HST at full weight from the first step unless a test asks for the ramp."""
    torch.manual_seed(seed)
    return create_model("hsbs", num_classes=7, **{**TINY, "hst_warmup_epochs": 0.0, **options})


def _gradients(term: torch.Tensor, model: nn.Module) -> dict[str, torch.Tensor | None]:
    named = dict(model.named_parameters())
    return dict(zip(named, torch.autograd.grad(term, list(named.values()), allow_unused=True, retain_graph=True)))


def _mass(grads: dict, prefix: str) -> float:
    return sum(float(g.abs().sum()) for name, g in grads.items() if name.startswith(prefix) and g is not None)


def _step(model: nn.Module, optimizer: torch.optim.Optimizer, step: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """One training step as the engine takes it: forward, loss, backward, optimiser step, then step_end."""
    model.train()
    terms = model.loss(model(_images(seed=seed)), {"label": LABELS})
    optimizer.zero_grad()
    sum(terms.values()).backward()
    optimizer.step()
    model.step_end(step)
    return terms


# ---------------------------------------------------------------- 3a: HST that starts late

def test_late_start_gives_exactly_zero_hst_until_the_start_then_ramps_in():
    stages = [torch.rand(2, 4, size, size, generator=torch.Generator().manual_seed(size)) for size in (17, 9, 5, 3)]
    loss = HSTLoss(lambda_hst=10.0, warmup_epochs=2, start_epoch=3)
    for epoch in range(3):
        loss.set_epoch(epoch)
        assert loss.ramp() == 0.0 and torch.equal(loss(stages), torch.zeros(()))
    expected = {3: 0.5, 4: 1.0, 7: 1.0}        # the start epoch is taught: its teacher is trained by then
    for epoch, ramp in expected.items():
        loss.set_epoch(epoch)
        assert loss.ramp() == ramp
        assert torch.allclose(loss(stages), ramp * 10.0 * hst_loss(stages)) and loss(stages) > 0
    immediate = HSTLoss(warmup_epochs=0, start_epoch=3)
    immediate.set_epoch(3)
    assert immediate.ramp() == 1.0
    assert HSTLoss(warmup_epochs=2).ramp() == 0.0   # a start at 0 keeps today's ramp: 0 in the first epoch


def test_the_start_is_a_share_of_the_run_and_resumes_with_the_epochs_done():
    assert _hsbs(hst_start_fraction=0.75, train_epochs=8).hst.start_epoch == 6
    assert _hsbs(hst_start_fraction=0.5, train_epochs=9).hst.start_epoch == 5
    model = _hsbs(hst_start_fraction=0.5, train_epochs=4, bsa=False).train()
    hst_terms = []
    for epoch in range(4):
        output = model(_images())
        term = model.loss(output, {"label": LABELS})["hst"]
        hst_terms.append(term)
        if epoch < 2:   # exactly zero, and nothing of it reaches the network
            assert torch.equal(term, torch.zeros(())) and "hst_teacher_map" not in output.extras
            assert _mass(_gradients(term, model), "backbone.") == 0.0
        model.epoch_end(epoch)
        if epoch == 0:   # a run resumed after its first epoch continues the schedule from the buffer
            resumed = _hsbs(hst_start_fraction=0.5, train_epochs=4, bsa=False)
            resumed.load_state_dict(model.state_dict())
            assert resumed.hst._epochs_done == 1 and resumed.hst.ramp() == 0.0
            resumed.epoch_end(1)
            assert resumed.hst.ramp() == 1.0
    assert all(term > 0 for term in hst_terms[2:])
    with pytest.raises(ValueError, match="train_epochs"):
        _hsbs(hst_start_fraction=0.5)
    with pytest.raises(ValueError, match=r"hst_start_fraction is a share of training in \[0, 1\)"):
        _hsbs(hst_start_fraction=1.0, train_epochs=8)


# ---------------------------------------------------------------- 3b: a moving-average teacher

def test_moving_average_teacher_follows_the_mean_teacher_rule():
    torch.manual_seed(0)
    network = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    teacher = MovingAverageTeacher(network, decay=0.5)
    assert not list(teacher.parameters())          # buffers only: the optimiser never sees the copy
    assert {name for name, _ in teacher.named_buffers()} >= {"network.0.weight", "network.1.running_mean"}
    assert [mean_teacher_decay(0.5, n) for n in range(4)] == [0.0, 0.5, 0.5, 0.5]
    assert mean_teacher_decay(0.99, 9) == pytest.approx(0.9)

    history = []
    for update in range(3):
        with torch.no_grad():
            network[0].weight.add_(1.0)
            network[1].running_mean.add_(2.0)
            network[1].num_batches_tracked.add_(1)
        history.append((network[0].weight.clone(), network[1].running_mean.clone()))
        teacher.update(network)
    weight, mean = history[0]                       # update 1: decay 0, the copy is the network
    for current_weight, current_mean in history[1:]:
        weight, mean = 0.5 * weight + 0.5 * current_weight, 0.5 * mean + 0.5 * current_mean
    assert torch.allclose(teacher.network[0].weight, weight) and torch.allclose(teacher.network[1].running_mean, mean)
    assert int(teacher.network[1].num_batches_tracked) == 3 and int(teacher.updates) == 3
    assert not teacher.network[0].weight.requires_grad
    teacher.train()
    assert not teacher.network.training             # its BatchNorm never learns from the student's batches


def test_ema_teacher_is_updated_by_the_engine_after_every_optimiser_step():
    model = _hsbs(hst_teacher="ema", bsa=False)
    assert set(dict(model.named_parameters())) == set(dict(_hsbs(bsa=False).named_parameters()))
    assert any(key.startswith("teacher_network.network.") for key in model.state_dict())
    before = model.teacher_network.network.conv1.weight.clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = [(_images(seed=seed), {"label": LABELS}) for seed in range(2)]
    _, steps = train_one_epoch(model, batches, optimizer, device=torch.device("cpu"), epoch=0)
    assert steps == 2 and int(model.teacher_network.updates) == 2
    # update 1 copies the weights, update 2 averages with decay 0.5: the copy is neither the start nor the network
    assert not torch.equal(model.teacher_network.network.conv1.weight, before)
    assert not torch.equal(model.teacher_network.network.conv1.weight, model.backbone.conv1.weight)
    output = model.train()(_images())
    assert output.extras["hst_teacher_map"].shape == output.extras["stages"][-1].shape[:1] + (3, 3)
    with torch.no_grad():
        expected = activation_attention(model.teacher_network.network(_images())[-1])
    assert torch.allclose(output.extras["hst_teacher_map"], expected)
    grads = _gradients(model.loss(output, {"label": LABELS})["hst"], model)
    assert _mass(grads, "backbone.layer4.") == 0.0 and _mass(grads, "backbone.layer1.") > 0


# ---------------------------------------------------------------- 3c: a frozen converged baseline

def _baseline_checkpoint(path, *, width: int = 8, stem: str = "no_maxpool", config: bool = True):
    torch.manual_seed(3)
    baseline = create_model("baseline", num_classes=7, backbone_width=width, stem=stem)
    state = {"model": baseline.state_dict()}
    if config:
        state["config"] = {"model": {"name": "baseline", "backbone": "resnet18", "stem": stem, "backbone_width": width}}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return baseline


def test_frozen_teacher_is_the_baseline_backbone_on_the_same_batch(tmp_path):
    baseline = _baseline_checkpoint(tmp_path / "teacher" / "best.pt")
    model = _hsbs(hst_teacher="frozen", hst_teacher_checkpoint=str(tmp_path / "teacher"), bsa=False)
    assert set(dict(model.named_parameters())) == set(dict(_hsbs(bsa=False).named_parameters()))
    # not copied into the run's checkpoints: the file is the teacher
    assert not any(key.startswith("teacher_network") for key in model.state_dict())
    for name, tensor in baseline.backbone.state_dict().items():
        assert torch.equal(dict(model.teacher_network.network.named_buffers())[name], tensor), name
    output = model.train()(_images())
    with torch.no_grad():
        expected = activation_attention(baseline.eval().backbone(_images())[-1])
    assert torch.allclose(output.extras["hst_teacher_map"], expected)
    term = model.loss(output, {"label": LABELS})["hst"]
    assert term > 0 and _mass(_gradients(term, model), "backbone.layer4.") == 0.0
    # a file is accepted as well as a run folder
    assert _hsbs(hst_teacher="frozen", hst_teacher_checkpoint=str(tmp_path / "teacher" / "best.pt")) is not None


@pytest.mark.parametrize("case, words", [
    ("missing", "not found"),
    ("empty_run", "has no best.pt"),
    ("wider", "another architecture (backbone_width 16 where this model has 8)"),
    ("other_stem", "another architecture (stem standard where this model has no_maxpool)"),
    ("shapes_only", "does not match this model's backbone"),
    ("no_checkpoint", "give both or neither"),
    ("checkpoint_without_frozen", "give both or neither"),
])
def test_frozen_teacher_errors_are_one_line(tmp_path, case, words):
    path = tmp_path / "teacher"
    options = {"hst_teacher": "frozen", "hst_teacher_checkpoint": str(path)}
    if case == "empty_run":
        path.mkdir()
    elif case == "wider":
        _baseline_checkpoint(path / "best.pt", width=16)
    elif case == "other_stem":
        _baseline_checkpoint(path / "best.pt", stem="standard")
    elif case == "shapes_only":             # a file without its config: the tensor shapes tell
        _baseline_checkpoint(path / "best.pt", width=16, config=False)
    elif case == "no_checkpoint":
        options = {"hst_teacher": "frozen"}
    elif case == "checkpoint_without_frozen":
        _baseline_checkpoint(path / "best.pt")
        options = {"hst_teacher": "ema", "hst_teacher_checkpoint": str(path)}
    with pytest.raises((ValueError, FileNotFoundError)) as error:
        _hsbs(**options)
    assert words in str(error.value) and "\n" not in str(error.value)


# ---------------------------------------------------------------- 3d: the SAD direction

def test_upsampling_keeps_the_resnet_placement():
    teacher = torch.rand(2, 5, 5)
    for size in (9, 17, 33):     # 65 px: (n - 1) r + 1 cells, where the placement is align_corners=True
        reference = F.interpolate(teacher.unsqueeze(1), size=(size, size), mode="bilinear", align_corners=True)[:, 0]
        assert torch.allclose(upsample_to_student_grid(teacher, (size, size)), reference, atol=1e-6)
    assert torch.equal(upsample_to_student_grid(teacher, (5, 5)), teacher)
    assert upsample_to_student_grid(torch.rand(1, 4, 4), (8, 8)).shape == (1, 8, 8)   # 64 px: the border held


def test_sad_direction_equals_a_hand_computation():
    """One sample, one channel: layer3 3 x 3, layer4 2 x 2 (a, b / c, d = the squares of the teacher)."""
    layer3 = torch.tensor([[[[1.0, 0.0, 2.0], [0.5, 1.0, 0.0], [0.0, 1.5, 1.0]]]], requires_grad=True)
    layer4 = torch.tensor([[[[1.0, 2.0], [0.0, 1.0]]]], requires_grad=True)
    stages = [torch.zeros(1, 1, 9, 9), torch.zeros(1, 1, 5, 5), layer3, layer4]
    a, b, c, d = 1.0, 4.0, 0.0, 1.0
    upsampled = torch.tensor([[a, (a + b) / 2, b],
                              [(a + c) / 2, (a + b + c + d) / 4, (b + d) / 2],
                              [c, (c + d) / 2, d]])
    student = layer3.detach()[0, 0] ** 2
    expected = 0.7 * ((student.flatten().softmax(0) - upsampled.flatten().softmax(0)) ** 2).sum() / (1 * 4)
    loss = hst_loss(stages, weights=(0.0, 0.0, 1.0), direction="upsample", scale=0.7)
    assert torch.allclose(loss, expected)
    grads = torch.autograd.grad(loss, [layer3, layer4], allow_unused=True)
    assert grads[0].abs().sum() > 0 and (grads[1] is None or grads[1].abs().sum() == 0)
    # the chain mode upsamples each next stage; both modes agree with deep_to_all where layer4 is the next stage
    assert torch.allclose(hst_loss(stages, weights=(0.0, 0.0, 1.0), direction="upsample", mode="chain", scale=0.7),
                          expected)
    assert not torch.allclose(hst_loss(stages, weights=(0.0, 0.0, 1.0), scale=0.7), expected)   # the pool direction
    with pytest.raises(ValueError, match="belong to hst_direction 'pool'"):
        hst_loss(stages, direction="upsample", mask_quantile=0.5)
    with pytest.raises(ValueError, match="hst_direction"):
        HSTLoss(direction="sideways")


def test_sad_direction_in_the_model_trains_the_students_only():
    model = _hsbs(hst_direction="upsample", bsa=False).train()
    term = model.loss(model(_images()), {"label": LABELS})["hst"]
    grads = _gradients(term, model)
    assert term > 0
    assert _mass(grads, "backbone.layer4.") == 0.0 and _mass(grads, "classifier.") == 0.0
    for layer in ("backbone.conv1.", "backbone.layer1.", "backbone.layer2.", "backbone.layer3."):
        assert _mass(grads, layer) > 0.0, layer


# ---------------------------------------------------------------- 4: BSA for the rare classes

def test_masked_diagonal_is_no_partner_in_the_similarity_or_its_target():
    model = _hsbs(hst=False, bsa_mask_diagonal=True).train()
    output = model(_images())
    similarity = output.extras["similarity"]
    assert torch.equal(similarity.diagonal(), torch.zeros(4))
    targets = same_label_targets(LABELS, mask_diagonal=True)
    assert torch.equal(targets.diagonal(), torch.zeros(4))
    assert torch.equal(targets[1], torch.tensor([0.0, 0.0, 0.0, 1.0]))   # its only partner is the other 1
    assert torch.equal(targets[0], torch.zeros(4))                        # class 0 alone: no partner at all
    # rows 1 and 3 have a partner; rows 0 and 2 (alone in their class) are left out of the mean
    per_row = -(targets * similarity.clamp_min(1e-12).log()).sum(dim=1)   # KL minus the targets' entropy (0 here)
    expected = 0.1 * (per_row[1] + per_row[3]) / 2
    assert torch.allclose(model.loss(output, {"label": LABELS})["bsa_sim"], expected)


def test_prototype_memory_gives_a_minority_sample_a_partner():
    torch.manual_seed(0)
    bsa = BatchSimilarityAttention(6, 4, mask_diagonal=True, similarity="cosine", memory_classes=3,
                                   prototype_momentum=0.5)
    z, labels = torch.randn(3, 6), torch.tensor([0, 0, 1])     # the class-1 face has nobody in its batch
    assert same_label_targets(labels, mask_diagonal=True)[2].sum() == 0
    similarity = bsa.similarity(z)
    assert similarity.shape == (3, 6) and torch.equal(similarity[:, 3:], torch.zeros(3, 3))   # no prototype yet

    bsa.update_prototypes(z, labels)
    assert bsa.prototype_seen.tolist() == [True, True, False]
    assert torch.allclose(bsa.class_prototypes[0], z[:2].mean(dim=0)) and torch.equal(bsa.class_prototypes[1], z[2])
    targets = same_label_targets(labels, mask_diagonal=True, prototypes_seen=bsa.prototype_seen)
    assert torch.equal(targets[2], torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 0.0]))      # its own prototype
    assert torch.equal(targets[0], torch.tensor([0.0, 0.5, 0.0, 0.5, 0.0, 0.0]))      # a face and a prototype
    similarity = bsa.similarity(z)
    assert similarity[2, 4] > 0 and torch.equal(similarity[:, 5], torch.zeros(3))     # class 2: never seen
    assert torch.allclose(similarity.sum(dim=1), torch.ones(3)) and torch.equal(similarity.diagonal(), torch.zeros(3))
    loss = similarity_supervision_loss(similarity, labels, mask_diagonal=True, prototypes_seen=bsa.prototype_seen)
    log = similarity.log()
    by_row = [0.5 * (math.log(0.5) - log[0, 1]) + 0.5 * (math.log(0.5) - log[0, 3]),
              0.5 * (math.log(0.5) - log[1, 0]) + 0.5 * (math.log(0.5) - log[1, 3]),
              -log[2, 4]]                                  # KL(P_i || S_i) over the entries where P_i > 0
    assert torch.allclose(loss, sum(by_row) / 3)

    later = torch.randn(2, 6)
    bsa.update_prototypes(later, torch.tensor([1, 1]))          # momentum 0.5 toward the new class-1 mean
    assert torch.allclose(bsa.class_prototypes[1], 0.5 * z[2] + 0.5 * later.mean(dim=0))
    assert torch.allclose(bsa.class_prototypes[0], z[:2].mean(dim=0))                # class 0 absent: kept


def test_prototype_memory_in_the_model_is_training_only():
    model = _hsbs(hst=False, bsa_prototypes=True).train()
    output = model(_images())
    assert output.maps["bsa_similarity"].shape == (4, 4) and output.maps["bsa_prototype_similarity"].shape == (4, 7)
    terms = model.loss(output, {"label": LABELS})
    assert torch.isfinite(terms["bsa_sim"])
    assert model.bsa.prototype_seen.tolist() == [True, True, True, False, False, False, False]
    model.eval()
    with torch.no_grad():
        before = model(_images()).logits
        model.bsa.class_prototypes.normal_()
        assert torch.equal(model(_images()).logits, before)     # BSA is bypassed at evaluation: so is its memory
    assert "bsa.class_prototypes" not in _hsbs().state_dict()   # the default model's checkpoints are unchanged


@pytest.mark.parametrize("head", ["own", "stop_gradient"])
def test_own_head_or_stop_gradient_keep_the_bsa_loss_off_the_main_classifier(head):
    model = _hsbs(hst=False, bsa_head=head).train()
    terms = model.loss(model(_images()), {"label": LABELS})
    total = _gradients(sum(terms.values()), model)
    plain = _gradients(terms["ce"], model)
    from_bsa = _gradients(terms["ce_bsa"], model)
    for name in ("classifier.weight", "classifier.bias"):
        assert torch.allclose(total[name], plain[name]), name            # CE(W z) alone trains W
        assert from_bsa[name] is None or from_bsa[name].abs().sum() == 0
    assert _mass(from_bsa, "bsa.") > 0 and _mass(from_bsa, "backbone.") > 0    # z~ still trains BSA and the network
    assert (_mass(from_bsa, "bsa_classifier.") > 0) == (head == "own")
    shared = _hsbs(hst=False).train()
    assert _mass(_gradients(shared.loss(shared(_images()), {"label": LABELS})["ce_bsa"], shared), "classifier.") > 0
    assert not any(key.startswith("bsa_classifier") for key in shared.state_dict())   # the default is unchanged


def test_own_head_serves_bsa_at_evaluation():
    model = _hsbs(hst=False, bsa_head="own", bsa_at_eval=True).eval()
    with torch.no_grad():
        output = model(_images())
        z_mixed, _ = model.bsa(output.features)
        assert torch.allclose(output.logits, model.bsa_classifier(z_mixed), atol=1e-6)
        model.bsa_at_eval = False
        assert torch.allclose(model(_images()).logits, model.classifier(output.features), atol=1e-6)
    with pytest.raises(ValueError, match="unknown bsa_head"):
        _hsbs(bsa_head="separate")


@pytest.mark.parametrize("options", [
    {"hst_teacher": "ema"}, {"hst_direction": "upsample"}, {"hst_start_fraction": 0.5, "train_epochs": 4},
    {"bsa_prototypes": True, "bsa_mask_diagonal": True}, {"bsa_head": "own"}, {"bsa_head": "stop_gradient"},
], ids=lambda options: "-".join(f"{key}={value}" for key, value in options.items()))
def test_a_variant_training_step_reads_no_tensor_on_the_host(options, record_host_reads):
    """As every model's default step (test_model_contract): a host read would make a GPU wait in every step."""
    model = _hsbs(**options).train()
    reads, stop_recording = record_host_reads()
    for step in range(2):                      # the second step meets a filled memory and an updated teacher
        terms = model.loss(model(_images(seed=step)), {"label": LABELS})
        sum(terms.values()).backward()
        model.step_end(step + 1)
    stop_recording()
    assert reads == []


# ---------------------------------------------------------------- resume

def test_new_buffers_resume_exactly():
    options = {"hst_teacher": "ema", "bsa_prototypes": True, "hst_start_fraction": 0.5, "train_epochs": 4}
    model = _hsbs(**options)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(2):
        _step(model, optimizer, step + 1, seed=step)
    model.epoch_end(0)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    resumed = _hsbs(seed=1, **options)
    resumed.load_state_dict(saved["model"])
    resumed_optimizer = torch.optim.SGD(resumed.parameters(), lr=0.05)
    resumed_optimizer.load_state_dict(saved["optimizer"])
    new = [key for key in saved["model"] if key.startswith(("teacher_network.", "bsa.class_", "bsa.prototype"))]
    assert "teacher_network.updates" in new and "bsa.class_prototypes" in new and "bsa.prototype_seen" in new
    for key, tensor in model.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], tensor), key
    assert resumed.teacher_network._updates == 2 and resumed.hst._epochs_done == 1
    for step in range(2, 4):             # the same next steps from both: identical buffers and weights
        _step(model, optimizer, step + 1, seed=step)
        _step(resumed, resumed_optimizer, step + 1, seed=step)
    for key, tensor in model.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], tensor), key


def test_a_run_with_the_new_buffers_resumes_exactly_through_fit(tmp_path):
    """Stopped after epoch 1 and resumed from last.pt, the run ends where the uninterrupted run ends: weights,
    moving-average teacher, prototype memory and the late start's epoch count, tensor for tensor."""
    from hsbs_lib.data.pipeline.cache import cache_split
    from hsbs_lib.engine.train import fit, resume_config
    from test_engine import ColourFER, _config

    train, val = cache_split(ColourFER(48, seed=0), 32), cache_split(ColourFER(24, seed=2, split="val"), 32)
    overrides = ["model.name=hsbs", "model.backbone_width=8", "model.stem=no_maxpool", "train.epochs=2",
                 "train.max_steps_per_epoch=2", "train.deterministic=true", "train.record_intensity=false",
                 "model.options.hst_teacher=ema", "model.options.bsa_prototypes=true",
                 "model.options.hst_start_fraction=0.5"]
    straight = fit(_config(tmp_path / "straight", *overrides), train_data=train, val_data=val)
    fit(_config(tmp_path / "split", *overrides, "train.stop_after_epoch=1"), train_data=train, val_data=val)
    resumed = fit(resume_config(tmp_path / "split"), resume=tmp_path / "split", train_data=train, val_data=val)
    state = straight.model.state_dict()
    assert int(state["teacher_network.updates"]) == 4 and bool(state["bsa.prototype_seen"].any())
    assert int(state["hst.epochs_done"]) == 2
    for name, value in state.items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name


def test_frozen_copy_keeps_an_absent_bias_absent():
    copy = frozen_copy(nn.Conv2d(1, 2, 3, bias=False), persistent=False)
    assert copy.bias is None and not copy.state_dict() and copy(torch.ones(1, 1, 3, 3)).shape == (1, 2, 1, 1)


# ---------------------------------------------------------------- the compare config

TINY_RUN = ["model.backbone_width=8", "data.input_size=33", "train.batch_size=4", "train.epochs=4"]


def test_every_variant_row_builds_and_takes_one_training_step(tmp_path):
    plan = load_plan("configs/variants_hsbs.yaml")
    plan.out = str(tmp_path / "variants")
    wanted = {"baseline", "hsbs", "+HST(start at 50%)", "+HST(start at 75%)", "+HST(EMA teacher)",
              "+HST(frozen baseline teacher)", "+HST(SAD direction)", "+BSA(no diagonal)", "+BSA(prototypes)",
              "+BSA(own head)", "+BSA(stop-gradient)"}
    assert wanted <= set(plan.rows) and plan.reference_row() == "baseline"
    classes = [str(index) for index in range(7)]
    teacher_row = "+HST(frozen baseline teacher)"
    config = load_plan_config(plan, run_overrides(plan, teacher_row, 3, TINY_RUN))
    # {out} and {seed}: the teacher is the baseline row's run of the same seed in this comparison
    assert config.model.options["hst_teacher_checkpoint"] == str(tmp_path / "variants" / "baseline" / "seed3")
    config = load_plan_config(plan, run_overrides(plan, teacher_row, 0, TINY_RUN))
    with pytest.raises(FileNotFoundError, match="not found") as error:   # the baseline row has not run yet
        build_model(config, classes)
    assert "\n" not in str(error.value)
    # the plan's stem, auto, is the pooled stem at this size: the frozen teacher must have the student's
    _baseline_checkpoint(tmp_path / "variants" / "baseline" / "seed0" / "best.pt", stem="pooled")

    for row in plan.rows:
        config = load_plan_config(plan, run_overrides(plan, row, 0, TINY_RUN))
        model = build_model(config, classes)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        terms = _step(model, optimizer, 1)
        assert all(torch.isfinite(value) for value in terms.values()), row
        if "start at" in row:
            assert model.hst.start_epoch == {"+HST(start at 50%)": 2, "+HST(start at 75%)": 3}[row]
            assert float(terms["hst"].detach()) == 0.0


def test_compare_reports_minority_recall_of_every_run():
    def report(fear, disgust):
        return {"accuracy": 0.8, "mean_class_accuracy": 0.7, "macro_f1": 0.7,
                "per_class_recall": {"fear": fear, "disgust": disgust}}
    results = {"baseline": {0: report(0.25, 0.5), 1: report(0.5, 0.75)},
               "+BSA(prototypes)": {0: report(0.5, 0.5), 1: report(0.75, 1.0)}}
    summaries = summarise(results, reference="baseline")
    assert summaries[1]["recall_fear_per_seed"] == "0.5000 0.7500"
    table = format_minority_runs(summaries)
    assert "| +BSA(prototypes) | 0 1 | 50.0 / 75.0 | 50.0 / 100.0 |" in table
    assert "| baseline | 0 1 | 25.0 / 50.0 | 50.0 / 75.0 |" in table
    assert summaries[1]["recall_disgust_diff"] == pytest.approx(0.125)
    assert not math.isnan(summaries[1]["recall_fear_diff_low"])
