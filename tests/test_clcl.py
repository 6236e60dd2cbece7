"""CLCL: MSR geometry, deterministic k-means, the CLBS/CLFM terms and the model contract."""
import logging

import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from hsbs_lib.config import load_config
from hsbs_lib.losses.clcl import CLBSLoss, CLFMLoss, channel_codes, cluster_alignment_loss, kmeans
from hsbs_lib.models import create_model, list_models
from hsbs_lib.models.backbones import ResNetBackbone
from hsbs_lib.models.backbones import stage_sizes
from hsbs_lib.models.clcl import DESIGN_GEOMETRY, RELEASED_GEOMETRY, MultiScaleHead, msr_geometry

# METHODS.md, CLCL: (kernel, stride, padding) of the layer1..4 MSR convs; 224 px released, 112 px ours.
METHODS_GEOMETRY = {
    224: [(4, 11, 1), (8, 11, 3), (16, 10, 2), (32, 8, 0)],
    112: [(2, 5, 0), (4, 5, 1), (8, 5, 1), (16, 5, 1)],
}


def _model(**options):
    torch.manual_seed(0)
    options.setdefault("input_size", 64)
    return create_model("clcl", num_classes=7, **options)


def _batch(size=4, side=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(size, 3, side, side, generator=generator)
    return images, {"label": torch.randint(0, 7, (size,), generator=generator)}


# --- MSR geometry -----------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [224, 112])
def test_msr_conv_geometry_matches_the_released_numbers(size):
    geometry = msr_geometry(size)
    assert [(g.kernel, g.stride, g.padding) for g in geometry] == METHODS_GEOMETRY[size]
    head = MultiScaleHead(ResNetBackbone("resnet18").channels, input_size=size)
    built = [(conv.kernel_size[0], conv.stride[0], conv.padding[0]) for conv in head.projections]
    assert built == METHODS_GEOMETRY[size]
    assert all(conv.bias is None and conv.out_channels == 128 for conv in head.projections)


def test_only_the_224_px_geometry_is_labelled_as_released():
    # The released code builds the MSR head for 224 px only; the 112 px sizes are our choice.
    assert set(RELEASED_GEOMETRY) == {224} and set(DESIGN_GEOMETRY) == {112}
    import hsbs_lib.models.clcl as clcl_module
    released_part = clcl_module.__doc__.split("[design]")[0]
    assert "2/5/0" not in released_part and "4/11/1" in released_part


@pytest.mark.parametrize("side,stem", [(64, "standard"), (112, "standard"), (224, "standard"), (48, "small"),
                                       (64, "no_maxpool"), (48, "no_maxpool")])
def test_stage_sizes_match_the_backbone(side, stem):
    backbone = ResNetBackbone("resnet18", stem=stem).eval()
    with torch.no_grad():
        stages = backbone(torch.zeros(1, 3, side, side))
    assert tuple(stage.shape[-1] for stage in stages) == stage_sizes(side, stem=stem)


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
@pytest.mark.parametrize("side", [224, 112, 64])
def test_msr_grid_is_11x11_without_resizing(backbone, side, caplog):
    channels = ResNetBackbone(backbone).channels
    head = MultiScaleHead(channels, input_size=side)
    stages = [torch.randn(2, c, s, s) for c, s in zip(channels, stage_sizes(side))]
    with caplog.at_level(logging.WARNING):
        per_layer, fused = head(stages)
    assert [tuple(m.shape) for m in per_layer] == [(2, 128, 11, 11)] * 4
    assert fused.shape == (2, 128, 11, 11)
    assert "resizing" not in caplog.text


def test_a_narrow_backbone_is_widened_to_what_the_shuffle_divides():
    # width 24: stages of 24, 48, 96, 192 channels; the shuffles need multiples of 4, 16, 64 and 256
    channels = [24, 48, 96, 192]
    head = MultiScaleHead(channels, input_size=64)
    assert [isinstance(widen, torch.nn.Identity) for widen in head.widen] == [True, True, False, False]
    assert [widen.out_channels for widen in head.widen[2:]] == [128, 256]
    stages = [torch.randn(2, c, s, s) for c, s in zip(channels, stage_sizes(64))]
    per_layer, fused = head(stages)
    assert [tuple(m.shape) for m in per_layer] == [(2, 128, 11, 11)] * 4
    fused.square().mean().backward()
    assert all(widen.weight.grad.abs().sum() > 0 for widen in head.widen[2:])
    # the paper's widths add nothing: the same parameters as before the widening existed
    assert all(isinstance(widen, torch.nn.Identity) for widen in MultiScaleHead([32, 64, 128, 256]).widen)


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
def test_model_outputs_at_64px(backbone):
    model = _model(backbone=backbone).eval()
    images, _ = _batch(2)
    with torch.no_grad():
        out = model(images)
    assert out.logits.shape == (2, 7) and torch.isfinite(out.logits).all()
    assert out.features.shape == (2, 121)
    assert out.maps["msr_map"].shape == (2, 11, 11)
    for name, side in zip(("layer1", "layer2", "layer3", "layer4"), stage_sizes(64)):
        assert out.maps[f"features/{name}"].shape[-2:] == (side, side)
        assert out.maps[f"attention/{name}"].shape == (2, side, side)
    assert torch.allclose(out.maps["attention/layer2"], out.maps["features/layer2"].pow(2).mean(1))


def test_other_input_sizes_are_resized_to_the_built_geometry(caplog):
    model = _model(input_size=224).eval()
    with caplog.at_level(logging.WARNING), torch.no_grad():
        out = model(_batch(2, side=64)[0])
    assert out.maps["msr_map"].shape == (2, 11, 11) and out.logits.shape == (2, 7)
    assert "input_size" in caplog.text


def test_small_input_stem_at_48px():
    model = _model(input_size=48, stem="small").eval()
    with torch.no_grad():
        out = model(_batch(2, side=48)[0])
    assert out.maps["msr_map"].shape == (2, 11, 11)
    assert out.maps["features/layer4"].shape[-1] == 6


# --- k-means ----------------------------------------------------------------------------------------

def _blobs(seed=0):
    generator = torch.Generator().manual_seed(seed)
    means = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    truth = torch.arange(4).repeat_interleave(25)
    return means[truth] + 0.3 * torch.randn(100, 2, generator=generator), truth, means


def test_kmeans_recovers_well_separated_clusters():
    points, truth, means = _blobs()
    centroids, labels = kmeans(points, 4, iters=10, seed=0)
    assert adjusted_rand_score(truth.numpy(), labels.numpy()) == 1.0
    distances = torch.cdist(means, centroids)
    assert torch.equal(distances.argmin(1).sort().values, torch.arange(4))   # one centroid per true mean
    assert distances.min(1).values.max() < 0.3


def test_kmeans_is_deterministic_and_depends_on_the_seed():
    points = torch.rand(60, 2, generator=torch.Generator().manual_seed(3))
    first, labels_first = kmeans(points, 7, iters=10, seed=0)
    second, labels_second = kmeans(points, 7, iters=10, seed=0)
    assert torch.equal(first, second) and torch.equal(labels_first, labels_second)
    other, _ = kmeans(points, 7, iters=10, seed=1)
    # Compare as sets of centres: another seed gives another local optimum on unstructured data.
    def as_set(c):
        return c[torch.argsort(c[:, 0] * 1000 + c[:, 1])]
    assert not torch.allclose(as_set(first), as_set(other), atol=1e-4)


def test_kmeans_with_fewer_points_than_clusters_and_batched_groups():
    points = torch.tensor([[0.0, 1.0], [5.0, 5.0], [-3.0, 2.0]])
    centroids, labels = kmeans(points, 7)
    assert centroids.shape == (3, 2)
    assert sorted(labels.tolist()) == [0, 1, 2]
    assert torch.equal(centroids[labels], points)
    grouped, grouped_labels = kmeans(torch.randn(5, 30, 4), 4)
    assert grouped.shape == (5, 4, 4) and grouped_labels.shape == (5, 30)
    single, _ = kmeans(torch.ones(1, 3), 4)            # one point, identical coordinates: no failure
    assert torch.equal(single, torch.ones(1, 3))


def test_kmeans_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one cluster"):
        kmeans(torch.randn(4, 2), 0)
    with pytest.raises(ValueError, match="shape"):
        kmeans(torch.randn(2, 3, 4, 5), 2)


# --- the contrast terms -----------------------------------------------------------------------------

def test_cluster_alignment_is_minus_half_when_students_sit_on_the_centroids():
    centroids = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    students = torch.tensor([[[2.0, 0.0], [3.0, 0.0], [0.0, 0.5]]], requires_grad=True)
    assert torch.isclose(cluster_alignment_loss(students, centroids), torch.tensor(-0.5))
    # A cluster nobody is assigned to counts as aligned (released behaviour).
    # Both students join cluster 0 (mean (1, 0.2)); cluster 1 is empty.
    lonely = torch.tensor([[[1.0, 0.1], [1.0, 0.3]]], requires_grad=True)
    loss = cluster_alignment_loss(lonely, centroids)
    expected = -0.5 * (1 / torch.tensor(1.04).sqrt() + 1) / 2
    assert torch.isclose(loss, expected)
    loss.backward()
    assert lonely.grad.abs().sum() > 0


def test_channel_codes_are_spatial_distributions():
    codes = channel_codes(torch.randn(2, 8, 16, 16), (2, 2))
    assert codes.shape == (2, 8, 4)
    assert torch.allclose(codes.sum(-1), torch.ones(2, 8))


def test_loss_modules_are_deterministic_and_detach_the_teacher():
    student = torch.randn(6, 484, requires_grad=True)
    teacher = torch.randn(6, 484, requires_grad=True)
    clbs = CLBSLoss(7)
    assert torch.equal(clbs(student, teacher), clbs(student, teacher))
    clbs(student, teacher).backward()
    assert student.grad.abs().sum() > 0 and teacher.grad is None
    shallow = torch.randn(3, 16, 8, 8, requires_grad=True)
    deep = torch.randn(3, 32, 2, 2, requires_grad=True)
    CLFMLoss(4)(shallow, deep).backward()
    assert shallow.grad.abs().sum() > 0 and deep.grad is None


# --- the model contract -----------------------------------------------------------------------------

def _grad_norms(term, modules):
    params = {name: list(module.parameters()) for name, module in modules.items()}
    flat = [p for group in params.values() for p in group]
    grads = torch.autograd.grad(term, flat, retain_graph=True, allow_unused=True)
    norms, index = {}, 0
    for name, group in params.items():
        norms[name] = sum(0.0 if g is None else g.abs().sum().item() for g in grads[index:index + len(group)])
        index += len(group)
    return norms


def test_every_term_trains_what_it_should_and_nothing_else():
    model = _model(layer_weights=(0.1, 0.1, 0.1, 0.0), clfm="trainable").train()
    images, targets = _batch(4)
    out = model(images)
    terms = model.loss(out, targets)
    assert set(terms) == {"ce", *(f"{part}/layer{n}" for part in ("clbs", "clfm") for n in (1, 2, 3))}
    backbone = model.backbone
    modules = {f"layer{n}": getattr(backbone, f"layer{n}") for n in (1, 2, 3, 4)}
    modules.update({f"msr{n}": model.head.projections[n - 1] for n in (1, 2, 3, 4)})
    modules.update({f"proj{n}": model.clbs_projections[f"layer{n}"] for n in (1, 2, 3)})
    modules.update({"fuse": model.head.fuse, "classifier": model.classifier})

    ce = _grad_norms(terms["ce"], modules)
    for name in ("layer1", "layer4", "msr1", "msr4", "fuse", "classifier"):
        assert ce[name] > 0, name
    for n in (1, 2, 3):
        clbs = _grad_norms(terms[f"clbs/layer{n}"], modules)
        trained = {f"layer{k}" for k in range(1, n + 1)} | {f"msr{n}", f"proj{n}"}
        for name, norm in clbs.items():
            assert (norm > 0) == (name in trained), (f"clbs/layer{n}", name, norm)
        clfm = _grad_norms(terms[f"clfm/layer{n}"], modules)
        trained = {f"layer{k}" for k in range(1, n + 1)}
        for name, norm in clfm.items():
            assert (norm > 0) == (name in trained), (f"clfm/layer{n}", name, norm)


@pytest.mark.parametrize("clfm", [False, "detached", "trainable"])
def test_total_loss_reaches_every_parameter(clfm):
    model = _model(clfm=clfm).train()
    images, targets = _batch(4)
    sum(model.loss(model(images), targets).values()).backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing


@pytest.mark.parametrize("batch_size", [1, 2, 5])
def test_runs_with_fewer_samples_than_clusters(batch_size):
    model = _model(clbs_clusters=7).train()
    images, targets = _batch(batch_size)
    terms = model.loss(model(images), targets)
    assert all(torch.isfinite(value) for value in terms.values())
    sum(terms.values()).backward()
    assert model.backbone.layer2[0].conv1.weight.grad.abs().sum() > 0


def test_loss_is_deterministic_for_one_forward():
    model = _model().train()
    images, targets = _batch(6)
    out = model(images)
    first = {k: v.item() for k, v in model.loss(out, targets).items()}
    second = {k: v.item() for k, v in model.loss(out, targets).items()}
    assert first == second


def test_batch_mean_map_is_added_in_training_and_eval_is_batch_independent():
    model = _model(batch_mean=True)
    images, _ = _batch(4)
    model.eval()
    with torch.no_grad():
        alone = model(images[:1]).logits
        together = model(images).logits[:1]
        other_batch = model(torch.cat([images[:1], torch.randn(3, 3, 64, 64)])).logits[:1]
    assert torch.allclose(alone, together, atol=1e-5) and torch.allclose(alone, other_batch, atol=1e-5)

    model.train()
    with_mean = model(images)
    model.batch_mean = False
    without_mean = model(images)
    shift = with_mean.features - without_mean.features
    assert shift.abs().max() > 1e-4                               # the batch-mean map is added in training
    assert torch.allclose(shift, shift[:1].expand_as(shift), atol=1e-6)   # ... and it is one map for the batch


def test_batch_mean_train_and_eval_logits_agree_once_the_running_mean_settles():
    # BatchNorm layers stay in eval mode throughout, so the batch-mean map is the only part of the
    # model whose train and eval behaviour differ; evaluation must add what training added.
    model = _model(batch_mean=True, clbs=False, clfm=False)
    images, _ = _batch(8)
    batch_norms = [module for module in model.modules() if isinstance(module, torch.nn.BatchNorm2d)]
    model.train()
    for module in batch_norms:
        module.eval()
    with torch.no_grad():
        for _ in range(100):           # momentum 0.1: the running mean is within 0.9^100 of the batch's
            train_logits = model(images).logits
        model.eval()
        eval_logits = model(images).logits
    assert (train_logits - eval_logits).abs().max() < 1e-4, (train_logits - eval_logits).abs().max()
    assert not torch.equal(model.running_batch_mean, torch.zeros(11, 11))


def test_clfm_defaults_to_the_released_behaviour_no_gradient():
    # The released CLFM term is built from top-k indices: it never trains anything. So by default there
    # is no CLFM term; "detached" reports one without a gradient; "trainable" is the named variant.
    images, targets = _batch(4)
    default = _model()
    assert default.clfm_mode == "off" and "clfm/layer2" not in default.loss(default(images), targets)
    detached = _model(clfm="detached").train()
    term = detached.loss(detached(images), targets)["clfm/layer2"]
    assert torch.isfinite(term) and not term.requires_grad
    trainable = _model(clfm="trainable").train()
    assert trainable.loss(trainable(images), targets)["clfm/layer2"].requires_grad
    with pytest.raises(ValueError, match="model.options.clfm must be false, 'detached' or 'trainable', got 'released'"):
        _model(clfm="released")


def test_each_switch_removes_its_term():
    images, targets = _batch(2)
    names = lambda model: set(model.loss(model(images), targets))   # noqa: E731
    assert names(_model(clfm="trainable")) == {"ce", "clbs/layer2", "clfm/layer2"}
    assert names(_model(clbs=False, clfm="trainable")) == {"ce", "clfm/layer2"}
    assert names(_model(clfm=False)) == {"ce", "clbs/layer2"}
    assert names(_model(layer_weights={"layer3": 0.2}, clfm=True)) == {"ce", "clbs/layer3", "clfm/layer3"}
    msr_only = _model(clbs=False, clfm=False)
    assert names(msr_only) == {"ce"} and hasattr(msr_only, "head")
    baseline = _model(msr=False, clbs=False, clfm=False)
    out = baseline(images)
    assert names(baseline) == {"ce"} and not hasattr(baseline, "head")
    assert out.features.shape == (2, 512) and "msr_map" not in out.maps
    assert names(_model(msr=False, clbs=False, clfm="trainable")) == {"ce", "clfm/layer2"}


def test_readable_option_errors():
    with pytest.raises(ValueError, match="msr=False"):
        _model(msr=False)
    with pytest.raises(ValueError, match="teacher"):
        _model(layer_weights=(0, 0.1, 0, 0.1))
    with pytest.raises(ValueError, match="4 values"):
        _model(layer_weights=(0.1, 0.1))
    with pytest.raises(ValueError, match="unknown layer"):
        _model(layer_weights={"layer7": 0.1})


def test_registered_and_built_from_the_demo_config():
    from hsbs_lib.data.labels import CANONICAL_7
    from hsbs_lib.engine.build import build_model

    assert "clcl" in list_models()
    config = load_config("configs/synthfer_clcl.yaml")
    assert config.model.name == "clcl"
    model = build_model(config, CANONICAL_7)
    assert model.head.input_size == config.data.input_size  # the engine passes the data's size
    resized = build_model(load_config("configs/synthfer_clcl.yaml", ["data.input_size=112"]), CANONICAL_7)
    assert resized.head.input_size == 112
    assert model.layer_weights == {"layer2": 0.1}


@pytest.mark.parametrize("options, words", [
    ({"batch_mean_momentum": -1.0}, "batch_mean_momentum must be in"),
    ({"clbs_clusters": 0}, "clbs_clusters must be a whole number"),
    ({"clfm_clusters": -1}, "clfm_clusters must be a whole number"),
    ({"kmeans_iters": 0}, "kmeans_iters must be a whole number"),
    ({"clfm_temperature": 0.0}, "clfm_temperature must be > 0"),
])
def test_bad_clcl_options_are_refused_when_the_model_is_built(options, words):
    with pytest.raises(ValueError, match=words):
        create_model("clcl", num_classes=7, backbone_width=16, input_size=64, **options)
