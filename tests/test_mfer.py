"""MFER: DS attention, multiscale classifier, feature-loss terms, switches and batch independence."""
import pytest
import torch
import torch.nn.functional as F

from hsbs_lib.losses.center import CenterLoss
from hsbs_lib.losses.dsf import DeepSmoothFeatureLoss
from hsbs_lib.losses.lgm import LGMLoss
from hsbs_lib.models import create_model, list_models
from hsbs_lib.models.mfer import MFER, DSAttention, MultiScaleClassifier

#: stage grid sizes of a standard-stem ResNet (METHODS.md table)
GRIDS = {64: (16, 8, 4, 2), 112: (28, 14, 7, 4), 224: (56, 28, 14, 7)}
STAGES = ("layer1", "layer2", "layer3", "layer4")


def _batch(size=64, n=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, size, size, generator=generator)
    targets = {"label": torch.arange(n) % 7}
    return images, targets


def _nonzero_grad(module_or_parameter) -> bool:
    parameters = ([module_or_parameter] if isinstance(module_or_parameter, torch.nn.Parameter)
                  else list(module_or_parameter.parameters()))
    return all(p.grad is not None and p.grad.abs().sum() > 0 for p in parameters)


def _no_grad(module) -> bool:
    return all(p.grad is None or p.grad.abs().sum() == 0 for p in module.parameters())


def test_registered():
    assert "mfer" in list_models()
    assert isinstance(create_model("mfer"), MFER)


@pytest.mark.parametrize("backbone,depthwise", [("resnet18", True), ("resnet18", False),
                                                ("resnet50", True), ("resnet50", False)])
def test_output_shapes(backbone, depthwise):
    torch.manual_seed(0)
    model = create_model("mfer", num_classes=7, backbone=backbone, depthwise=depthwise).eval()
    channels = model.backbone.channels
    assert model.ds_attention["layer4"].query_conv.groups == (channels[3] if depthwise else 1)
    # ResNet-50 with the released full 7x7 convolutions holds 263M DS parameters: one size is enough there.
    sizes = (64,) if (backbone, depthwise) == ("resnet50", False) else tuple(GRIDS)
    for size in sizes:
        grids = GRIDS[size]
        with torch.no_grad():
            out = model(torch.rand(1, 3, size, size))
        assert out.logits.shape == (1, 7)
        assert out.features.shape == (1, channels[3])
        assert torch.isfinite(out.logits).all()
        for name, c, g in zip(STAGES, channels, grids):
            assert out.maps[f"features/{name}"].shape == (1, c, g, g)
            assert out.maps[f"attention/{name}"].shape == (1, g, g)
        assert out.maps["attention/ds_layer3"].shape == (1, grids[2], grids[2])
        assert out.maps["attention/ds_layer4"].shape == (1, grids[3], grids[3])
        assert len(out.extras["head_logits"]) == 3


def test_small_input_keeps_a_large_layer4_grid_at_48_px():
    model = create_model("mfer", stem="small").eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 48, 48))
    assert out.maps["attention/ds_layer4"].shape == (2, 6, 6)
    assert out.logits.shape == (2, 7)


@pytest.mark.parametrize("depthwise", [True, False])
def test_ds_attention_is_a_spatial_softmax_per_channel_plus_residual(depthwise):
    torch.manual_seed(0)
    attention = DSAttention(16, kernel_size=7, depthwise=depthwise)
    x = torch.randn(2, 16, 5, 6)
    weights = attention.attention_weights(x)
    assert weights.shape == x.shape
    torch.testing.assert_close(weights.sum(dim=(2, 3)), torch.ones(2, 16))
    assert not torch.allclose(weights.sum(dim=1), torch.ones(2, 5, 6))  # not a softmax over channels
    out, attention_map = attention(x)
    assert out.shape == x.shape
    torch.testing.assert_close(attention_map, weights.mean(dim=1))
    torch.testing.assert_close(attention_map.sum(dim=(1, 2)), torch.ones(2))

    # The scores are Q + K with Q = channel LayerNorm(GELU(conv(X))) and K = MLP(X) * X.
    query = F.gelu(attention.query_conv(x)).permute(0, 2, 3, 1)
    query = F.layer_norm(query, (16,), attention.query_norm.weight, attention.query_norm.bias)
    key = attention.key(x) * x
    expected = torch.softmax((query.permute(0, 3, 1, 2) + key).flatten(2), dim=-1).view_as(x)
    torch.testing.assert_close(weights, expected)
    torch.testing.assert_close(out, expected * attention.value(x) + x)

    with torch.no_grad():  # a zero value path leaves only the residual
        attention.value.weight.zero_()
        attention.value.bias.zero_()
    torch.testing.assert_close(attention(x)[0], x)
    expected_groups = 16 if depthwise else 1
    assert attention.query_conv.groups == expected_groups
    with pytest.raises(ValueError, match="odd"):
        DSAttention(16, kernel_size=4)


def test_msc_heads_see_2_3_4_quarters_and_logits_are_their_sum():
    torch.manual_seed(0)
    msc = MultiScaleClassifier(512, 7)
    assert msc.input_sizes == (256, 384, 512)
    assert [head.fc1.in_features for head in msc.heads] == [256, 384, 512]
    assert [head.fc2.out_features for head in msc.heads] == [7, 7, 7]
    features = torch.randn(3, 512)
    changed = features.clone()
    changed[:, 400:] += 1.0  # only the last quarter
    before, after = msc(features), msc(changed)
    torch.testing.assert_close(before[0], after[0])
    torch.testing.assert_close(before[1], after[1])
    assert not torch.allclose(before[2], after[2])
    changed[:, 300:] += 1.0  # now the third quarter too
    after = msc(changed)
    torch.testing.assert_close(before[0], after[0])
    assert not torch.allclose(before[1], after[1])

    model = create_model("mfer").eval()
    assert model.classifier.input_sizes == (256, 384, 512)
    with torch.no_grad():
        out = model(_batch()[0])
    torch.testing.assert_close(out.logits, sum(out.extras["head_logits"]))


@pytest.mark.parametrize("feature_loss,parameter_names", [("dsf", ["centers"]), ("center", ["centers"]),
                                                          ("lgm", ["means", "log_variances"])])
def test_every_loss_term_reaches_the_parameters_it_trains(feature_loss, parameter_names):
    torch.manual_seed(0)
    model = create_model("mfer", feature_loss=feature_loss).train()
    images, targets = _batch()
    out = model(images)
    terms = model.loss(out, targets)
    assert set(terms) == {"ce/head1", "ce/head2", "ce/head3", feature_loss}
    heads = model.classifier.heads
    feature_parameters = [getattr(model.feature_loss, name) for name in parameter_names]
    ds_parts = [part for attention in model.ds_attention.values()
                for part in (attention.value, attention.key, attention.query_conv, attention.query_norm)]
    for name, value in terms.items():
        assert torch.isfinite(value) and value.item() > 0, name
        model.zero_grad(set_to_none=True)
        value.backward(retain_graph=True)
        assert _nonzero_grad(model.backbone.layer1), name
        assert all(_nonzero_grad(part) for part in ds_parts), name
        if name.startswith("ce/head"):
            index = int(name[-1]) - 1
            assert _nonzero_grad(heads[index]), name
            assert all(_no_grad(head) for i, head in enumerate(heads) if i != index), name
            assert all(p.grad is None for p in feature_parameters), name
        else:
            assert all(_nonzero_grad(p) for p in feature_parameters), name
            assert all(_no_grad(head) for head in heads), name

    model.zero_grad(set_to_none=True)
    out = model(images)
    out.maps["features/layer3"].retain_grad()  # the tensors the learning-intensity hooks read
    sum(model.loss(out, targets).values()).backward()
    assert out.maps["features/layer3"].grad.abs().sum() > 0
    missing = [name for name, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing


SWITCHES = [
    ({}, {"ce/head1", "ce/head2", "ce/head3", "dsf"}, ("layer3", "layer4")),
    ({"ds_attention": False}, {"ce/head1", "ce/head2", "ce/head3", "dsf"}, ()),
    ({"ds_layers": ["layer4"]}, {"ce/head1", "ce/head2", "ce/head3", "dsf"}, ("layer4",)),
    ({"depthwise": False}, {"ce/head1", "ce/head2", "ce/head3", "dsf"}, ("layer3", "layer4")),
    ({"msc": False}, {"ce", "dsf"}, ("layer3", "layer4")),
    ({"feature_loss": "none"}, {"ce/head1", "ce/head2", "ce/head3"}, ("layer3", "layer4")),
    ({"feature_loss": "center"}, {"ce/head1", "ce/head2", "ce/head3", "center"}, ("layer3", "layer4")),
    ({"feature_loss": "lgm"}, {"ce/head1", "ce/head2", "ce/head3", "lgm"}, ("layer3", "layer4")),
    ({"ds_attention": False, "msc": False, "feature_loss": "none"}, {"ce"}, ()),
]


@pytest.mark.parametrize("options,expected_terms,ds_layers", SWITCHES)
def test_each_switch_builds_trains_a_step_and_sets_the_terms(options, expected_terms, ds_layers):
    torch.manual_seed(0)
    model = create_model("mfer", **options).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images, targets = _batch()
    out = model(images)
    terms = model.loss(out, targets)
    assert set(terms) == expected_terms
    assert tuple(model.ds_attention) == ds_layers
    assert {k for k in out.maps if k.startswith("attention/ds_")} == {f"attention/ds_{n}" for n in ds_layers}
    assert all(f"features/{n}" in out.maps and f"attention/{n}" in out.maps for n in STAGES)
    if not options.get("msc", True):
        assert isinstance(model.classifier, torch.nn.Linear)
        torch.testing.assert_close(out.logits, out.extras["head_logits"][0])
    if options.get("feature_loss") == "none":
        assert model.feature_loss is None and model.epoch_end(0) == {}
    else:
        name = next(iter(expected_terms - {"ce", "ce/head1", "ce/head2", "ce/head3"}))
        assert set(model.epoch_end(0)) == {f"{name}/center_distance"}
    before = [p.detach().clone() for p in model.parameters()]
    total = sum(terms.values())
    assert torch.isfinite(total)
    optimizer.zero_grad()
    total.backward()
    optimizer.step()
    changed = [not torch.equal(a, p) for a, p in zip(before, model.parameters())]
    assert all(changed)
    assert torch.isfinite(model(images).logits).all()


def test_feature_loss_defaults_weights_and_options():
    images, targets = _batch()
    expected = {"dsf": (DeepSmoothFeatureLoss, 1e-3), "center": (CenterLoss, 1e-3), "lgm": (LGMLoss, 1e-2)}
    for name, (loss_class, weight) in expected.items():
        model = create_model("mfer", feature_loss=name).train()
        assert isinstance(model.feature_loss, loss_class) and model.feature_loss_weight == weight
        out = model(images)
        term = model.loss(out, targets)[name]
        torch.testing.assert_close(term, weight * model.feature_loss(out.features, targets["label"]))
    model = create_model("mfer", feature_loss="dsf", feature_loss_weight=0.5,
                         feature_loss_options={"eps": 0.2, "margin": 3.0})
    assert model.feature_loss_weight == 0.5
    assert (model.feature_loss.eps, model.feature_loss.margin) == (0.2, 3.0)
    # DSF uses label distributions when the batch has them
    soft = torch.softmax(torch.randn(4, 7), dim=1)
    out = model.train()(images)
    term = model.loss(out, {**targets, "soft_label": soft})["dsf"]
    torch.testing.assert_close(term, 0.5 * model.feature_loss(out.features, soft))
    with pytest.raises(ValueError, match="feature_loss"):
        create_model("mfer", feature_loss="triplet")
    with pytest.raises(ValueError, match="ds_layers"):
        create_model("mfer", ds_layers=("layer5",))


def test_head_label_smoothing_defaults_to_mfer_and_can_defer_to_the_engine():
    torch.manual_seed(0)
    images, targets = _batch()
    model = create_model("mfer", feature_loss="none").eval()
    model.configure_criterion(label_smoothing=0.3)
    with torch.no_grad():
        out = model(images)
        terms = model.loss(out, targets)
        for i, logits in enumerate(out.extras["head_logits"], start=1):
            expected = F.cross_entropy(logits, targets["label"], label_smoothing=0.1)
            torch.testing.assert_close(terms[f"ce/head{i}"], expected)
        model.head_label_smoothing = None
        terms = model.loss(out, targets)
        expected = F.cross_entropy(out.extras["head_logits"][0], targets["label"], label_smoothing=0.3)
        torch.testing.assert_close(terms["ce/head1"], expected)


def test_eval_is_batch_independent_and_deterministic():
    torch.manual_seed(0)
    model = create_model("mfer").train()
    images, _ = _batch(n=5)
    model(images)  # move the BatchNorm running statistics off their initial values
    model.eval()
    with torch.no_grad():
        together = model(images)
        alone = torch.cat([model(images[i:i + 1]).logits for i in range(5)])
        with_others = model(torch.cat([images[2:3], torch.rand(3, 3, 64, 64)])).logits[0]
        again = model(images).logits
    torch.testing.assert_close(together.logits, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(with_others, together.logits[2], atol=1e-5, rtol=0)
    assert torch.equal(together.logits, again)


@pytest.mark.parametrize("smoothing", [-0.1, 1.0])
def test_head_label_smoothing_outside_0_1_is_refused(smoothing):
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        create_model("mfer", num_classes=7, backbone_width=16, label_smoothing=smoothing)
