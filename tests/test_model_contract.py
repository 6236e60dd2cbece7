"""The contract every registered model follows, checked for each name in ``list_models()``.

Shapes at 64/112/224 px on ResNet-18 (and 224 px on ResNet-50; 64 px on ConvNeXt-Tiny), gradients
reaching every trainable parameter (ResNet-18 and ConvNeXt-Tiny), a non-zero gradient from each loss
term, eval-mode batch independence and determinism, and the small-input stem at 48 px. New methods are
covered as soon as they register themselves.
"""
from __future__ import annotations

import pytest
import torch

from hsbs_lib.models import ModelOutput, create_model, list_models
from hsbs_lib.models.registry import get_model_factory

# The package's own models (tests elsewhere may register toy models in the same process).
MODELS = [name for name in list_models() if get_model_factory(name).__module__.startswith("hsbs_lib.")]
NUM_CLASSES = 7
NUM_POSES = 5


def _images(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _targets(batch: int) -> dict[str, torch.Tensor]:
    # Several labels (and repeated ones) so batch-level terms such as contrast or similarity have content.
    return {"label": torch.arange(batch) % 4, "pose": torch.arange(batch) % NUM_POSES}


def _build(name: str, *, backbone: str = "resnet18", seed: int = 0, **options):
    torch.manual_seed(seed)
    model = create_model(name, num_classes=NUM_CLASSES, backbone=backbone, **options)
    for epoch in range(5):   # terms that ramp in over the first epochs (HST) are checked at full weight
        model.epoch_end(epoch)
    return model


def _train_step_loss(model, images, targets) -> tuple[ModelOutput, dict[str, torch.Tensor]]:
    model.train()
    output = model(images)
    terms = model.loss(output, targets)
    assert terms, "loss() returned no terms"
    return output, terms


#: host reads a training step may make: PhaNet reads two numbers once to skip an absent pose term and to
#: refuse pose bins out of range (one read for both checks).
HOST_READS = {"phanet": 1}


@pytest.mark.parametrize("name", MODELS)
def test_a_training_step_reads_no_tensor_on_the_host(name, record_host_reads):
    # On a GPU every host read of a tensor (bool, float, int, item, tolist) waits for all queued work: one
    # per step costs more than a method's extra arithmetic at batch 64. The engine makes its one read per
    # step itself (the loss terms and the finiteness check together); the models add none.
    model = _build(name, stem="no_maxpool", backbone_width=32, input_size=65)
    images, targets = _images(8, 65), _targets(8)
    reads, stop_recording = record_host_reads()
    _, terms = _train_step_loss(model, images, targets)
    sum(terms.values()).backward()
    stop_recording()
    assert len(reads) == HOST_READS.get(name, 0), reads


SHAPE_CASES = [("resnet18", 64), ("resnet18", 112), ("resnet18", 224), ("resnet50", 224)]


@pytest.mark.parametrize("backbone,size", SHAPE_CASES, ids=[f"{b}-{s}" for b, s in SHAPE_CASES])
@pytest.mark.parametrize("name", MODELS)
def test_output_shapes_and_finite_values(name, backbone, size):
    model = _build(name, backbone=backbone).eval()
    images = _images(2, size)
    with torch.no_grad():
        output = model(images)
    assert isinstance(output, ModelOutput)
    assert output.logits.shape == (2, NUM_CLASSES)
    assert output.features.ndim == 2 and output.features.shape[0] == 2
    assert torch.isfinite(output.logits).all(), f"{name}: non-finite logits"
    assert torch.isfinite(output.features).all(), f"{name}: non-finite features"
    for key, value in output.maps.items():
        if torch.is_tensor(value) and value.is_floating_point():
            assert torch.isfinite(value).all(), f"{name}: non-finite map {key}"


def parameters_without_gradient(model, images, targets) -> list[str]:
    """Names of trainable parameters the summed loss does not train.

    A zero-initialised gate (e.g. BSA's gamma) legitimately shields the layers behind it at the very first
    step, so an exactly-zero gradient counts only if it is still zero after one SGD step.
    """
    _, terms = _train_step_loss(model, images, targets)
    sum(terms.values()).backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    disconnected = [n for n, p in trainable.items() if p.grad is None]
    zero_at_first_step = [n for n, p in trainable.items() if p.grad is not None and not p.grad.abs().sum() > 0]
    if not zero_at_first_step:
        return disconnected
    torch.optim.SGD(model.parameters(), lr=1e-2).step()
    model.zero_grad(set_to_none=True)
    _, terms = _train_step_loss(model, images, targets)
    sum(terms.values()).backward()
    still_zero = [n for n in zero_at_first_step if trainable[n].grad is None or not trainable[n].grad.abs().sum() > 0]
    return disconnected + still_zero


@pytest.mark.parametrize("name", MODELS)
def test_every_parameter_gets_a_gradient(name):
    missing = parameters_without_gradient(_build(name), _images(4, 64), _targets(4))
    assert not missing, f"{name}: the loss trains no gradient into {missing}"


@pytest.mark.parametrize("name", MODELS)
def test_runs_and_trains_on_convnext_tiny(name):
    """Every method on torchvision's ConvNeXt-Tiny (the four stages as layer1..4) at 64 px, batch 2."""
    model = _build(name, backbone="convnext_tiny", input_size=64)
    images, targets = _images(2, 64), _targets(2)
    output, _ = _train_step_loss(model, images, targets)
    assert output.logits.shape == (2, NUM_CLASSES) and torch.isfinite(output.logits).all()
    assert [tuple(output.maps[f"features/layer{i}"].shape[1:]) for i in range(1, 5)] == \
        [(96, 16, 16), (192, 8, 8), (384, 4, 4), (768, 2, 2)]
    model.zero_grad(set_to_none=True)
    missing = parameters_without_gradient(model, images, targets)
    assert not missing, f"{name} on convnext_tiny: the loss trains no gradient into {missing}"


def test_the_gradient_check_catches_an_unused_parameter():
    model = _build("baseline")
    model.forgotten = torch.nn.Linear(3, 3)
    model.frozen_gate = torch.nn.Parameter(torch.zeros(()))  # multiplies nothing, so stays gradient-free
    original_forward = model.forward

    def forward_with_dead_gate(x):
        output = original_forward(x)
        output.logits = output.logits + model.frozen_gate * 0.0
        return output

    model.forward = forward_with_dead_gate
    missing = parameters_without_gradient(model, _images(4, 64), _targets(4))
    assert set(missing) == {"forgotten.weight", "forgotten.bias", "frozen_gate"}


@pytest.mark.parametrize("name", MODELS)
def test_each_loss_term_trains_something(name):
    model = _build(name)
    _, terms = _train_step_loss(model, _images(4, 64), _targets(4))
    params = [p for p in model.parameters() if p.requires_grad]
    for term_name, term in terms.items():
        assert term.ndim == 0 and torch.isfinite(term), f"{name}: term {term_name} is not a finite scalar"
        assert term.requires_grad, f"{name}: term '{term_name}' has no graph (no gradient can reach anything)"
        grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        assert any(g is not None and g.abs().sum() > 0 for g in grads), \
            f"{name}: loss term '{term_name}' gives no non-zero gradient to any parameter"


@pytest.mark.parametrize("name", MODELS)
def test_eval_predictions_do_not_depend_on_the_batch(name):
    model = _build(name)
    # A few training-mode passes give the BatchNorm running statistics realistic values.
    with torch.no_grad():
        model.train()
        for seed in range(2):
            model(_images(4, 64, seed=seed))
    model.eval()
    batch = _images(4, 64, seed=3)
    with torch.no_grad():
        together = model(batch).logits
        alone = model(batch[:1]).logits
        reordered = model(torch.cat([batch[2:], batch[:2]])).logits
    torch.testing.assert_close(alone[0], together[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(reordered[2:], together[:2], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_eval_is_deterministic(name):
    model = _build(name).eval()
    images = _images(3, 64)
    with torch.no_grad():
        first, second = model(images), model(images)
    assert torch.equal(first.logits, second.logits)
    assert torch.equal(first.features, second.features)


@pytest.mark.parametrize("name", MODELS)
def test_small_input_stem_at_48_pixels(name):
    model = _build(name, stem="small").eval()
    images = _images(2, 48)
    with torch.no_grad():
        output = model(images)
        layer4 = model.backbone(images)[-1]
    assert output.logits.shape == (2, NUM_CLASSES)
    assert torch.isfinite(output.logits).all()
    assert min(layer4.shape[-2:]) >= 3, f"{name}: layer4 grid {tuple(layer4.shape[-2:])} at 48 px"


def test_unknown_model_name_lists_the_available_ones():
    with pytest.raises(KeyError) as error:
        create_model("no-such-model")
    message = str(error.value)
    assert "no-such-model" in message
    for name in MODELS:
        assert name in message
