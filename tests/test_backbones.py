"""ResNet backbones: stage shapes, the small-input stem and local-only pretrained loading."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from hsbs_lib.models import create_model
from hsbs_lib.models.backbones import ResNetBackbone

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
