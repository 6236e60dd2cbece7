"""PhaNet and the learned uncertainty weighting: shapes, gradients per term, ablations, batch independence."""
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hsbs_lib.config import load_config
from hsbs_lib.data.labels import class_names
from hsbs_lib.engine.build import build_model
from hsbs_lib.losses.uncertainty import UncertaintyWeighting
from hsbs_lib.models import create_model
from hsbs_lib.models.phanet import PhaNet

NUM_CLASSES = 7
NUM_POSES = 5
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "synthfer_phanet.yaml"


def make_model(seed: int = 0, **options) -> PhaNet:
    torch.manual_seed(seed)
    return create_model("phanet", num_classes=NUM_CLASSES, backbone="resnet18", **options)


def make_batch(batch: int = 6, size: int = 64, with_pose: bool = True, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=generator)
    targets = {"label": torch.arange(batch) % NUM_CLASSES}
    if with_pose:
        targets["pose"] = torch.arange(batch) % NUM_POSES
    return images, targets


def gradient_norms(loss: torch.Tensor, model: torch.nn.Module) -> dict[str, float]:
    """Norm of d loss / d parameter for every parameter (0.0 where the loss does not reach it)."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [p for _, p in named], retain_graph=True, allow_unused=True)
    return {name: 0.0 if g is None else g.norm().item() for (name, _), g in zip(named, grads)}


def scale_features(model: PhaNet, images: torch.Tensor) -> torch.Tensor:
    """Recompute the per-scale features f_s (B, n_scales, E) from the model's own submodules."""
    stages = dict(zip(model.feature_layers, model.backbone(images)))
    return torch.stack([model.embed[s](model.attention[s](stages[s])[0]) for s in model.scales], dim=1)


@pytest.mark.parametrize("backbone,size,small_input", [
    ("resnet18", 64, False), ("resnet18", 112, False), ("resnet18", 224, False),
    ("resnet18", 48, True), ("resnet50", 64, False), ("resnet50", 224, False),
])
def test_output_shapes(backbone, size, small_input):
    torch.manual_seed(0)
    model = create_model("phanet", num_classes=NUM_CLASSES, backbone=backbone, stem="small" if small_input else "standard").eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.logits.shape == (2, NUM_CLASSES)
    assert out.features.shape == (2, 256)
    assert out.maps["pose_logits"].shape == (2, NUM_POSES)
    assert out.maps["scale_gates"].shape == (2, 3)
    assert torch.allclose(out.maps["scale_gates"].sum(1), torch.ones(2), atol=1e-5)
    for name in ("layer1", "layer2", "layer3", "layer4"):
        stage = out.maps[f"features/{name}"]
        assert stage.ndim == 4 and stage.shape[0] == 2
    for name in model.scales:
        attention = out.maps[f"attention/{name}"]
        assert attention.shape == (2, *out.maps[f"features/{name}"].shape[2:])
        assert (attention >= 0).all()
        assert torch.allclose(attention.sum(dim=(1, 2)), torch.ones(2), atol=1e-5)
    assert all(torch.isfinite(v).all() for v in out.maps.values())


def test_fused_feature_is_gate_weighted_sum_of_scales():
    model = make_model().eval()
    images, _ = make_batch(4)
    with torch.no_grad():
        out = model(images)
        per_scale = scale_features(model, images)
    gates = out.maps["scale_gates"]
    # The gate depends on the image: not the plain average.
    assert not torch.allclose(gates, torch.full_like(gates, 1 / 3), atol=1e-3)
    assert torch.allclose(out.features, (gates.unsqueeze(2) * per_scale).sum(1), atol=1e-5)
    assert torch.allclose(out.logits, model.classifier(out.features), atol=1e-5)


def test_training_without_pose_labels():
    model = make_model().train()
    images, targets = make_batch(with_pose=False)
    terms = model.loss(model(images), targets)
    assert set(terms) == {"ce", "ce/layer2", "ce/layer3", "ce/layer4"}
    total = sum(terms.values())
    assert torch.isfinite(total)
    norms = gradient_norms(total, model)
    # The pose head still learns through the gate (a latent view code); only the pose sigma is idle.
    assert all(value > 0 for value in norms.values()), [n for n, v in norms.items() if v == 0]
    total.backward()
    pose_index = model.loss_weighting.names.index("pose")
    assert model.loss_weighting.log_variance.grad[pose_index] == 0
    # Unknown poses everywhere (-1) behave exactly like no pose labels.
    targets["pose"] = torch.full_like(targets["label"], -1)
    assert "pose" not in model.loss(model(images), targets)


def test_pose_labels_train_the_pose_head_and_ignore_unknown_bins():
    model = make_model().train()
    images, targets = make_batch()
    targets["pose"][:2] = -1
    out = model(images)
    raw = model.raw_losses(out, targets)
    expected = F.cross_entropy(out.maps["pose_logits"][2:], targets["pose"][2:])
    assert torch.allclose(raw["pose"], expected, atol=1e-6)
    norms = gradient_norms(model.loss(out, targets)["pose"], model)
    assert norms["pose_head.weight"] > 0 and norms["pose_head.bias"] > 0
    assert norms["backbone.layer4.0.conv1.weight"] > 0
    # The pose loss trains the pose head and the backbone, not the expression branches.
    assert norms["classifier.weight"] == 0 and norms["aux_classifiers.layer3.weight"] == 0
    assert norms["attention.layer2.score.0.weight"] == 0


def test_every_loss_term_reaches_the_parameters_it_trains():
    model = make_model().train()
    images, targets = make_batch()
    out = model(images)
    terms = model.loss(out, targets)
    assert set(terms) == {"ce", "ce/layer2", "ce/layer3", "ce/layer4", "pose"}
    for name, term in terms.items():
        norms = gradient_norms(term, model)
        grad_sigma = torch.autograd.grad(term, model.loss_weighting.log_variance, retain_graph=True)[0]
        index = model.loss_weighting.names.index(name)
        assert grad_sigma[index] != 0 and grad_sigma.count_nonzero() == 1, name
        assert norms["backbone.conv1.weight"] > 0, name
        if name.startswith("ce/"):
            scale = name.split("/")[1]
            assert norms[f"aux_classifiers.{scale}.weight"] > 0
            assert norms[f"attention.{scale}.score.2.weight"] > 0
            assert norms[f"embed.{scale}.0.weight"] > 0
            others = [s for s in model.scales if s != scale]
            assert all(norms[f"aux_classifiers.{s}.weight"] == 0 for s in others)
            assert norms["classifier.weight"] == 0 and norms["gate.0.weight"] == 0
        if name == "ce/layer2":
            # A layer2 loss can only train the stem up to layer2.
            assert norms["backbone.layer3.0.conv1.weight"] == 0
        if name == "ce":
            assert norms["classifier.weight"] > 0 and norms["gate.2.weight"] > 0 and norms["pose_head.weight"] > 0
            assert all(norms[f"attention.{s}.score.2.weight"] > 0 for s in model.scales)
            assert all(norms[f"aux_classifiers.{s}.weight"] == 0 for s in model.scales)


def test_sigmas_learn_and_are_reported_each_epoch():
    model = make_model().train()
    images, targets = make_batch()
    assert model.epoch_end(0) == {f"sigma/{name}": 1.0 for name in ("ce", "ce/layer2", "ce/layer3", "ce/layer4", "pose")}
    optimizer = torch.optim.SGD(model.loss_weighting.parameters(), lr=0.5)
    sum(model.loss(model(images), targets).values()).backward()
    assert (model.loss_weighting.log_variance.grad != 0).all()
    optimizer.step()
    sigmas = model.epoch_end(1)
    assert all(isinstance(v, float) for v in sigmas.values())
    # At sigma = 1, d/ds [0.5 e^-s L + softplus(s)] = 0.5 - 0.5 L < 0 for a loss L > 1 (CE over 7 classes):
    # sigma grows, down-weighting the noisy terms.
    assert all(value > 1.0 for value in sigmas.values()), sigmas


def test_uncertainty_weighting_equation_and_optimum():
    weighting = UncertaintyWeighting(["a", "b"])
    with torch.no_grad():
        weighting.log_variance.copy_(torch.tensor([math.log(4.0), math.log(0.25)]))
    out = weighting({"a": torch.tensor(2.0), "b": torch.tensor(3.0)})
    assert out["a"].item() == pytest.approx(2.0 / 8.0 + math.log(5.0), rel=1e-6)
    assert out["b"].item() == pytest.approx(3.0 / 0.5 + math.log(1.25), rel=1e-6)
    assert set(weighting({"b": torch.tensor(1.0)})) == {"b"}       # absent terms are skipped
    with pytest.raises(KeyError, match="no learned weight"):
        weighting({"c": torch.tensor(1.0)})
    # Minimising over sigma reaches the closed form sigma^2 = (L + sqrt(L^2 + 8L)) / 4.
    loss_value = 2.5
    fit = UncertaintyWeighting(["x"])
    optimizer = torch.optim.Adam(fit.parameters(), lr=0.05)
    for _ in range(400):
        optimizer.zero_grad()
        fit({"x": torch.tensor(loss_value)})["x"].backward()
        optimizer.step()
    expected_variance = (loss_value + math.sqrt(loss_value ** 2 + 8 * loss_value)) / 4
    assert fit.sigmas()["x"] ** 2 == pytest.approx(expected_variance, rel=1e-3)


def test_fixed_weights_are_unit_weights():
    model = make_model(learned_weights=False).train()
    images, targets = make_batch()
    out = model(images)
    assert model.loss_weighting is None
    assert not any("log_variance" in name for name, _ in model.named_parameters())
    raw = model.raw_losses(out, targets)
    weighted = model.loss(out, targets)
    assert set(weighted) == set(raw) and all(torch.equal(weighted[k], raw[k]) for k in raw)
    assert weighted["ce"].item() == pytest.approx(F.cross_entropy(out.logits, targets["label"]).item(), rel=1e-6)
    assert model.epoch_end(0) == {}
    # Learned weights at their initial sigma = 1 give L / 2 + log 2 instead.
    learned = make_model(learned_weights=True)
    learned.load_state_dict(model.state_dict(), strict=False)
    learned_terms = learned.train().loss(learned(images), targets)
    assert learned_terms["ce"].item() == pytest.approx(0.5 * raw["ce"].item() + math.log(2), rel=1e-5)


def test_single_scale_ablation():
    model = make_model(single_scale="layer4").train()
    images, targets = make_batch()
    out = model(images)
    assert model.scales == ("layer4",) and model.gate is None
    assert [k for k in out.maps if k.startswith("attention/")] == ["attention/layer4"]
    assert torch.equal(out.maps["scale_gates"], torch.ones(len(images), 1))
    terms = model.loss(out, targets)
    assert set(terms) == {"ce", "ce/layer4", "pose"}
    sum(terms.values()).backward()
    assert model.attention.layer4.score[0].weight.grad.abs().sum() > 0
    with torch.no_grad():
        assert torch.allclose(out.features, scale_features(model, images)[:, 0], atol=1e-5)
    full = make_model()
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in full.parameters())
    with pytest.raises(ValueError, match="scales"):
        make_model(single_scale="layer5")


def test_gate_off_averages_scales_and_temperature_flattens_gates():
    model = make_model(gate=False).eval()
    images, targets = make_batch(4)
    assert model.gate is None
    with torch.no_grad():
        out = model(images)
        per_scale = scale_features(model, images)
    assert torch.allclose(out.maps["scale_gates"], torch.full((4, 3), 1 / 3))
    assert torch.allclose(out.features, per_scale.mean(1), atol=1e-5)
    assert model.train().loss(model(images), targets)["pose"].requires_grad   # pose head still trained by its loss
    # Neither gate nor pose loss: no pose head at all (no parameter left without a gradient).
    assert make_model(gate=False, pose_loss=False).pose_head is None

    gated = make_model().eval()
    with torch.no_grad():
        sharp = gated(images).maps["scale_gates"]
        gated.gate_temperature = 100.0
        flat = gated(images).maps["scale_gates"]

    def entropy(p):
        return -(p * p.log()).sum(1)
    assert (entropy(flat) > entropy(sharp)).all()


def test_aux_and_pose_switches_drop_their_terms():
    images, targets = make_batch()
    model = make_model(aux_losses=False, pose_loss=False).train()
    assert model.aux_classifiers is None
    assert set(model.loss(model(images), targets)) == {"ce"}
    assert model.loss_weighting.names == ("ce",)
    assert set(model.epoch_end(0)) == {"sigma/ce"}


def test_eval_is_batch_independent_and_deterministic():
    model = make_model().eval()
    images, _ = make_batch(5)
    with torch.no_grad():
        batch_out = model(images)
        single_out = model(images[2:3])
        again = model(images)
    assert torch.allclose(single_out.logits, batch_out.logits[2:3], atol=1e-5)
    assert torch.allclose(single_out.maps["scale_gates"], batch_out.maps["scale_gates"][2:3], atol=1e-5)
    assert torch.allclose(single_out.maps["attention/layer3"], batch_out.maps["attention/layer3"][2:3], atol=1e-5)
    assert torch.equal(batch_out.logits, again.logits)


def test_out_of_range_pose_label_is_a_readable_error():
    model = make_model().train()
    images, targets = make_batch()
    targets["pose"][0] = NUM_POSES
    with pytest.raises(ValueError, match="num_poses=5"):
        model.loss(model(images), targets)


def test_a_few_steps_reduce_the_loss():
    model = make_model(embed_dim=64).train()
    images, targets = make_batch(batch=8, size=48)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    raw_first = None
    for _ in range(12):
        optimizer.zero_grad()
        out = model(images)
        raw = model.raw_losses(out, targets)
        raw_first = raw_first or {k: v.item() for k, v in raw.items()}
        sum(model.loss(out, targets).values()).backward()
        optimizer.step()
    assert raw["ce"].item() < raw_first["ce"] and raw["pose"].item() < raw_first["pose"]
    assert all(value != 1.0 for value in model.epoch_end(0).values())


def test_config_builds_the_model():
    config = load_config(CONFIG)
    assert config.model.name == "phanet" and config.data.input_size == 65
    assert (config.train.epochs, config.train.batch_size, config.train.optimizer) == (8, 64, "adamw")
    model = build_model(config, class_names(config.data.num_classes))
    assert isinstance(model, PhaNet) and model.scales == ("layer2", "layer3", "layer4")
    assert model.num_poses == 5
