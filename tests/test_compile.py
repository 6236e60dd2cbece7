"""train.compile: the training step compiled (model and loss terms) trains as the eager step does, on a CPU."""
from __future__ import annotations

import logging

import pytest
import torch

from hsbs_lib.config import ConfigValueError, config_path, load_config, validate_config
from hsbs_lib.data.labels import class_names
from hsbs_lib.engine.build import build_model
from hsbs_lib.engine.train import (ModelWithLoss, build_optimizer, compile_step, fused_where_supported,
                                   train_one_epoch, unwrap_to_step_module)

METHODS = ("baseline", "hsbs", "clcl", "phanet", "mfer")


def _batches(steps: int = 2, batch: int = 8, size: int = 48):
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(batch, 3, size, size, generator=generator),
             {"label": torch.arange(batch) % 7, "pose": torch.arange(batch) % 5}) for _ in range(steps)]


def _losses(method: str, compiled: bool | str, backend: str = "inductor") -> list[dict[str, float]]:
    """The epoch means of each of two one-batch epochs of a tiny recipe of ``method``."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    config = load_config(config_path(f"synthfer_{method}"), ["data.input_size=48", "model.backbone_width=8"])
    torch.manual_seed(0)
    model = build_model(config, class_names(7), load_pretrained=False)
    optimizer = build_optimizer(model, config.train)
    step_module = compile_step(ModelWithLoss(model), compiled, torch.device("cpu"), backend=backend)
    losses = []
    for epoch, batch in enumerate(_batches()):
        means, _ = train_one_epoch(step_module, [batch], optimizer, device=torch.device("cpu"), epoch=epoch)
        losses.append(means)
    return losses


#: Inductor generates and builds C++ kernels, over a minute per method on two cores with a cold cache: HSBS, the
#: centre, is compiled with it; every method's step is captured (dynamo, AOT autograd: the graphs inductor would
#: receive, forward and backward) and run with the aot_eager backend, which is where this package's code can break.
BACKENDS = [("hsbs", "inductor")] + [(method, "aot_eager") for method in METHODS]


@pytest.mark.slow
@pytest.mark.parametrize("method,backend", BACKENDS)
def test_a_compiled_training_step_gives_the_eager_losses(method, backend):
    eager, compiled = _losses(method, False), _losses(method, True, backend)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1     # the step did run compiled
    for eager_step, compiled_step in zip(eager, compiled):
        assert eager_step.keys() == compiled_step.keys()
        for name, value in eager_step.items():
            assert compiled_step[name] == pytest.approx(value, rel=1e-3, abs=1e-5), name


def test_the_compiled_step_module_is_seen_through_and_reduce_overhead_falls_back_on_a_cpu(caplog):
    model = ModelWithLoss(torch.nn.Linear(2, 2))
    assert compile_step(model, False, torch.device("cpu")) is model
    with caplog.at_level(logging.WARNING, logger="hsbs_lib.engine"):
        compiled = compile_step(model, "reduce-overhead", torch.device("cpu"))
    assert unwrap_to_step_module(compiled) is model
    assert sum("reduce-overhead records CUDA graphs" in record.message for record in caplog.records) == 1


@pytest.mark.parametrize("value,expected", [("true", True), ("false", False), ("reduce-overhead", "reduce-overhead")])
def test_train_compile_takes_true_false_or_reduce_overhead(value, expected):
    config = validate_config(load_config(config_path("synthfer_baseline"), [f"train.compile={value}"]))
    assert config.train.compile == expected


def test_another_compile_mode_is_refused_in_one_line():
    with pytest.raises(ConfigValueError, match="config key 'train.compile' expects true, false or reduce-overhead, "
                                               "got 'max-speed'"):
        validate_config(load_config(config_path("synthfer_baseline"), ["train.compile=max-speed"]))


def test_the_fused_optimiser_step_gives_the_default_steps_values():
    parameters = [torch.nn.Parameter(torch.randn(5, 3, generator=torch.Generator().manual_seed(seed)))
                  for seed in range(2)]
    assert fused_where_supported(parameters) == {"fused": True}
    copies = [torch.nn.Parameter(p.detach().clone()) for p in parameters]
    fused = torch.optim.AdamW(parameters, lr=1e-2, weight_decay=1e-4, fused=True)
    default = torch.optim.AdamW(copies, lr=1e-2, weight_decay=1e-4)
    for step in range(3):
        gradients = [torch.randn(5, 3, generator=torch.Generator().manual_seed(10 + step)) for _ in parameters]
        for parameter, copy, gradient in zip(parameters, copies, gradients):
            parameter.grad, copy.grad = gradient.clone(), gradient.clone()
        fused.step()
        default.step()
    assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-7) for a, b in zip(parameters, copies))


def test_training_on_a_cpu_keeps_the_default_optimiser_step_and_the_fused_one_is_asked_for():
    # The recorded CPU runs were made with the default step; a GPU (and the operator count) takes the fused one.
    model = torch.nn.Linear(3, 2)
    train = load_config(config_path("synthfer_baseline")).train
    assert not build_optimizer(model, train).defaults.get("fused")
    assert not build_optimizer(model, train, fused=False).defaults.get("fused")
    assert build_optimizer(model, train, fused=True).defaults["fused"] is True
