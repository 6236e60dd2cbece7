"""ResNet and ConvNeXt backbones: stage shapes, the small-input stems and local-only pretrained loading."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops import StochasticDepth

from hsbs_lib.models import create_model
from hsbs_lib.models.backbones import ConvNeXtBackbone, ResNetBackbone, build_backbone

# METHODS.md, "Backbone shapes": (channels, grid) of layer1..layer4 for ResNet-18.
RESNET18_SHAPES = {
    224: [(64, 56), (128, 28), (256, 14), (512, 7)],
    112: [(64, 28), (128, 14), (256, 7), (512, 4)],
    64: [(64, 16), (128, 8), (256, 4), (512, 2)],
}


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return ResNetBackbone("resnet18").eval()


@pytest.mark.parametrize("size", sorted(RESNET18_SHAPES))
def test_resnet18_stage_shapes(resnet18, size):
    with torch.no_grad():
        stages = resnet18(torch.randn(1, 3, size, size))
    assert [(s.shape[1], s.shape[2]) for s in stages] == RESNET18_SHAPES[size]
    assert all(s.shape[2] == s.shape[3] for s in stages)


def test_resnet50_channels_on_the_same_grids():
    backbone = ResNetBackbone("resnet50").eval()
    assert backbone.channels == (256, 512, 1024, 2048) and backbone.out_channels == 2048
    with torch.no_grad():
        stages = backbone(torch.randn(1, 3, 64, 64))
    assert [(s.shape[1], s.shape[2]) for s in stages] == [(256, 16), (512, 8), (1024, 4), (2048, 2)]


def test_small_input_stem_keeps_fer2013_faces_at_least_3x3():
    backbone = ResNetBackbone("resnet18", stem="small").eval()
    assert backbone.conv1.kernel_size == (3, 3) and backbone.conv1.stride == (1, 1)
    assert isinstance(backbone.maxpool, nn.Identity)
    with torch.no_grad():
        stages = backbone(torch.randn(1, 3, 48, 48))
    assert [s.shape[-1] for s in stages] == [48, 24, 12, 6]
    with torch.no_grad():
        standard = ResNetBackbone("resnet18").eval()(torch.randn(1, 3, 48, 48))
    assert standard[-1].shape[-1] < 3  # why the option exists


def test_unknown_backbone_is_a_readable_error():
    with pytest.raises(KeyError, match="resnet18"):
        ResNetBackbone("vgg16")


def test_face_pretrained_checkpoint_with_module_prefix_loads(tmp_path):
    torch.manual_seed(1)
    source = torchvision.models.resnet18(weights=None)
    state = {f"module.{k}": v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    # A face-recognition checkpoint (MS-Celeb-1M style) ends in a 12666-identity classifier.
    state["module.fc.weight"] = torch.randn(12666, 512)
    state["module.fc.bias"] = torch.zeros(12666)
    path = tmp_path / "face_resnet18.pth"
    torch.save({"state_dict": state, "epoch": 40}, path)

    model = create_model("hsbs", pretrained=str(path))
    report = model.backbone.load_report
    backbone_keys = set(model.backbone.state_dict())
    assert len(report.matched) == len(backbone_keys) == len(source.state_dict()) - 2
    assert report.missing == [] and report.shape_mismatch == []
    assert sorted(report.unexpected) == ["fc.bias", "fc.weight"]
    assert "0 missing" in report.summary()
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, source.state_dict()[key]), key


def test_pretrained_loading_leaves_the_rest_of_the_model_alone(tmp_path):
    source = torchvision.models.resnet18(weights=None)
    path = tmp_path / "plain.pth"
    torch.save(source.state_dict(), path)
    torch.manual_seed(3)
    loaded = create_model("hsbs", pretrained=str(path))
    torch.manual_seed(3)
    fresh = create_model("hsbs")
    assert torch.equal(loaded.classifier.weight, fresh.classifier.weight)
    assert torch.equal(loaded.backbone.layer4[0].conv1.weight, source.layer4[0].conv1.weight)
    assert not torch.equal(loaded.backbone.layer4[0].conv1.weight, fresh.backbone.layer4[0].conv1.weight)


def test_imagenet_without_a_local_file_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    with pytest.raises(FileNotFoundError) as error:
        create_model("hsbs", pretrained="imagenet")
    message = str(error.value)
    assert str(tmp_path / "empty_torch_home") in message
    assert "resnet18" in message and "never downloads" in message


def test_missing_file_and_garbage_file_are_readable_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        create_model("hsbs", pretrained=str(tmp_path / "nope.pth"))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(ValueError, match="garbage.pth"):
        create_model("hsbs", pretrained=str(garbage))
    unrelated = tmp_path / "unrelated.pth"
    torch.save({"head.weight": torch.zeros(3, 3)}, unrelated)
    with pytest.raises(ValueError, match="no tensor matched"):
        create_model("hsbs", pretrained=str(unrelated))


# ---------------------------------------------------------------------------------------------- ConvNeXt

CONVNEXT_TINY_64 = [(96, 16), (192, 8), (384, 4), (768, 2)]


@pytest.fixture(scope="module")
def convnext_tiny():
    torch.manual_seed(0)
    return ConvNeXtBackbone("convnext_tiny").eval()


def test_convnext_tiny_taps_its_four_stages_like_the_resnets(convnext_tiny):
    assert convnext_tiny.channels == (96, 192, 384, 768) and convnext_tiny.out_channels == 768
    assert convnext_tiny.strides == (4, 8, 16, 32)
    with torch.no_grad():
        stages = convnext_tiny(torch.randn(2, 3, 64, 64))
    assert [(s.shape[1], s.shape[2]) for s in stages] == CONVNEXT_TINY_64
    assert convnext_tiny.stage_sizes(64) == (16, 8, 4, 2)
    # The taps are torchvision's own stage outputs, in torchvision's order.
    reference = torchvision.models.convnext_tiny(weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    reference.features.load_state_dict(
        {key.split(".", 1)[1]: value for key, value in
         _torchvision_names(convnext_tiny.state_dict()).items()})
    with torch.no_grad():
        torch.testing.assert_close(convnext_tiny(x)[-1], reference.features(x))


def _torchvision_names(state):
    """This module's names -> torchvision's features.N names (the inverse of remap_state_dict)."""
    renamed = {}
    for key, value in state.items():
        head, rest = key.split(".", 1)
        if head == "stem":
            renamed[f"features.0.{rest}"] = value
        elif head == "layer1":
            renamed[f"features.1.{rest}"] = value
        else:
            part, rest = rest.split(".", 1)
            renamed[f"features.{2 * int(head[-1]) - 2 + int(part)}.{rest}"] = value
    return renamed


@pytest.mark.parametrize("stem, size, grids", [("no_maxpool", 65, (32, 16, 8, 4)), ("small", 48, (48, 24, 12, 6))])
def test_convnext_stems_keep_small_inputs_on_a_grid(stem, size, grids):
    backbone = ConvNeXtBackbone("convnext_tiny", stem=stem).eval()
    with torch.no_grad():
        stages = backbone(torch.randn(1, 3, size, size))
    assert tuple(s.shape[-1] for s in stages) == grids == backbone.stage_sizes(size)


def test_convnext_options_that_do_not_apply_are_refused():
    with pytest.raises(ValueError, match="backbone_width"):
        ConvNeXtBackbone("convnext_tiny", width=32)
    with pytest.raises(ValueError, match="drop_path"):
        build_backbone("resnet18", drop_path=0.25)
    with pytest.raises(KeyError, match="convnext_tiny"):
        build_backbone("convnext_huge")


def test_mfer_on_convnext_base_is_the_released_design():
    model = create_model("mfer", backbone="convnext_base")
    assert model.backbone.channels == (128, 256, 512, 1024)
    depths = [module.p for module in model.backbone.modules() if isinstance(module, StochasticDepth)]
    assert len(depths) == 36 and depths[0] == 0.0 and depths[-1] == pytest.approx(0.25)  # linear ramp
    assert isinstance(model.feature_norm, nn.LayerNorm) and model.feature_norm.normalized_shape == (1024,)
    assert set(model.ds_attention) == {"layer3", "layer4"}
    assert model.ds_attention["layer4"].channels == 1024
    # On a ResNet nothing changes: no stochastic depth, no norm on the pooled feature.
    resnet = create_model("mfer")
    assert isinstance(resnet.feature_norm, nn.Identity)
    assert create_model("mfer", backbone="convnext_tiny").backbone.drop_path == 0.0


def _convnext_stand_in(seed: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    return torchvision.models.convnext_tiny(weights=None)


def _assert_loaded(model, source):
    report = model.backbone.load_report
    assert report.missing == [] and report.shape_mismatch == []
    assert len(report.matched) == len(model.backbone.state_dict())
    assert sorted(report.unexpected) == ["classifier.0.bias", "classifier.0.weight", "classifier.2.bias",
                                         "classifier.2.weight"]
    expected = source.state_dict()
    for key, value in _torchvision_names(model.backbone.state_dict()).items():
        assert torch.equal(value, expected[key]), key


def test_convnext_imagenet_weights_come_from_the_local_torch_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(FileNotFoundError) as error:
        create_model("baseline", backbone="convnext_tiny", pretrained="imagenet")
    cached = tmp_path / "torch_home" / "hub" / "checkpoints" / "convnext_tiny-983f1562.pth"
    assert str(cached) in str(error.value) and "never downloads" in str(error.value)

    source = _convnext_stand_in()
    cached.parent.mkdir(parents=True)
    torch.save(source.state_dict(), cached)        # torchvision's file: a plain state dict, features.N names
    _assert_loaded(create_model("baseline", backbone="convnext_tiny", pretrained="imagenet"), source)


def test_convnext_user_file_with_wrapper_and_module_prefix_loads(tmp_path):
    source = _convnext_stand_in(seed=5)
    path = tmp_path / "face_convnext_tiny.pth"
    torch.save({"model": {f"module.{key}": value for key, value in source.state_dict().items()}, "epoch": 3}, path)
    _assert_loaded(create_model("mfer", backbone="convnext_tiny", pretrained=str(path)), source)


def _original_convnext_names(state):
    """torchvision names -> the original ConvNeXt code's (timm, MFER's release): the inverse mapping."""
    parts = {"0": "dwconv", "2": "norm", "3": "pwconv1", "5": "pwconv2"}
    renamed = {}
    for key, value in state.items():
        index, rest = int(key.split(".")[1]), key.split(".", 2)[2]
        if key.startswith("classifier."):
            renamed[key.replace("classifier.2", "head").replace("classifier.0", "norm")] = value
        elif index % 2 == 0:                               # stem (0) and downsampling layers (2, 4, 6)
            renamed[f"downsample_layers.{index // 2}.{rest}"] = value
        else:
            block, rest = rest.split(".", 1)
            stage = f"stages.{index // 2}.{block}"
            if rest == "layer_scale":
                renamed[f"{stage}.gamma"] = value.reshape(-1)
            else:
                part, tail = rest.split(".")[1], rest.split(".", 2)[2]
                renamed[f"{stage}.{parts[part]}.{tail}"] = value
    return renamed


def test_convnext_checkpoint_in_the_original_layout_loads(tmp_path):
    """MFER's face-pretrained ConvNeXt comes in the original code's names (downsample_layers, stages, gamma)."""
    source = _convnext_stand_in(seed=6)
    path = tmp_path / "convnext_msceleb.pth"
    state = {key: value for key, value in source.state_dict().items() if key.startswith("features.")}
    torch.save({"model": _original_convnext_names(state)}, path)
    model = create_model("baseline", backbone="convnext_tiny", pretrained=str(path))
    report = model.backbone.load_report
    assert report.missing == [] and report.unexpected == [] and report.shape_mismatch == []
    for key, value in _torchvision_names(model.backbone.state_dict()).items():
        assert torch.equal(value, state[key]), key


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_zero_init_residual_starts_every_block_as_the_identity(name):
    from hsbs_lib.models.backbones import zero_init_residual_
    torch.manual_seed(0)
    backbone = ResNetBackbone(name, stem="no_maxpool", width=16 if name == "resnet18" else 64).eval()
    blocks = [block for stage in (backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4) for block in stage]
    assert zero_init_residual_(backbone) == len(blocks)
    plain = [block for block in blocks if block.downsample is None]
    assert plain
    for block in plain:       # without a shortcut projection, a block passes a non-negative input through
        x = torch.randn(2, block.conv1.in_channels, 5, 5).relu()
        with torch.no_grad():
            assert torch.equal(block(x), x)
    # the residual branch still trains: its last BatchNorm's scale gets a gradient
    backbone.train()
    sum(stage.sum() for stage in backbone(torch.randn(2, 3, 32, 32))).backward()
    last_norm = blocks[0].bn3 if name == "resnet50" else blocks[0].bn2
    assert last_norm.weight.grad is not None and last_norm.weight.grad.abs().sum() > 0


def test_recipe_switch_zero_init_residual_reaches_the_model():
    from hsbs_lib.config import load_config
    from hsbs_lib.engine.build import build_model
    config = load_config(None, ["model.name=baseline", "model.backbone_width=16", "model.zero_init_residual=true"])
    model = build_model(config, [str(i) for i in range(7)])
    assert all(float(block.bn2.weight.detach().abs().sum()) == 0 for block in model.backbone.layer3)
    config = load_config(None, ["model.name=baseline", "model.backbone_width=16"])
    assert all(float(block.bn2.weight.detach().abs().sum()) > 0 for block in build_model(config, list("abcdefg")).backbone.layer3)


def test_the_pooled_stem_keeps_no_maxpools_grid_with_a_stride_1_convolution_and_the_max_pool():
    """stem="pooled": torchvision's 7x7 convolution at stride 1, then its 3x3 stride-2 max-pool, so the maps
    are the no_maxpool stem's (33, 17, 9, 5 at 65 px) and the conv1 weights keep torchvision's shape."""
    pooled = ResNetBackbone("resnet18", stem="pooled", width=16).eval()
    plain = ResNetBackbone("resnet18", stem="no_maxpool", width=16).eval()
    with torch.no_grad():
        stages = pooled(torch.randn(2, 3, 65, 65))
    assert tuple(s.shape[-1] for s in stages) == (33, 17, 9, 5) == pooled.stage_sizes(65) == plain.stage_sizes(65)
    assert pooled.strides == plain.strides == (2, 4, 8, 16)
    assert (pooled.conv1.stride, pooled.conv1.kernel_size) == ((1, 1), (7, 7))
    assert isinstance(pooled.maxpool, torch.nn.MaxPool2d) and isinstance(plain.maxpool, torch.nn.Identity)
    assert pooled.conv1.weight.shape == plain.conv1.weight.shape        # torchvision's stem weights load as is
