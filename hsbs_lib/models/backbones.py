"""torchvision ResNets with feature taps on layer1..layer4 and local-only pretrained loading.

Shapes (ResNet-18, standard stem): a 224 px input gives layer1..4 maps of 64x56x56, 128x28x28,
256x14x14, 512x7x7; at 64 px they are 16, 8, 4 and 2 pixels wide. ``small_input=True`` swaps the
stem for a 3x3 stride-1 convolution without max-pool (4x larger maps), so 48 px FER2013 faces keep a
layer4 grid of at least 3x3.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn

log = logging.getLogger(__name__)

BACKBONES = {
    "resnet18": ("resnet18", "ResNet18_Weights", (64, 128, 256, 512)),
    "resnet34": ("resnet34", "ResNet34_Weights", (64, 128, 256, 512)),
    "resnet50": ("resnet50", "ResNet50_Weights", (256, 512, 1024, 2048)),
}


@dataclass
class LoadReport:
    """What a pretrained load matched, so a user sees at once whether the file fitted."""

    source: str
    matched: list[str]
    missing: list[str]
    unexpected: list[str]
    shape_mismatch: list[str]

    def summary(self) -> str:
        return (f"{self.source}: {len(self.matched)} tensors matched, {len(self.missing)} missing, "
                f"{len(self.unexpected)} unexpected, {len(self.shape_mismatch)} with another shape")


class ResNetBackbone(nn.Module):
    """A torchvision ResNet returning the four stage outputs.

    forward(x: (B, 3, H, W)) -> [x1, x2, x3, x4] with strides 4, 8, 16, 32 (1, 2, 4, 8 with small_input).
    """

    def __init__(self, name: str = "resnet18", pretrained: str | None = None, small_input: bool = False):
        super().__init__()
        if name not in BACKBONES:
            raise KeyError(f"unknown backbone '{name}'; available: {', '.join(BACKBONES)}")
        builder, _, channels = BACKBONES[name]
        net = getattr(torchvision.models, builder)(weights=None)
        self.name = name
        self.channels: tuple[int, int, int, int] = channels
        self.small_input = small_input
        if small_input:
            net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        # Same attribute names as torchvision, so torchvision and face-pretrained state dicts load as is.
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.load_report: LoadReport | None = None
        if pretrained:
            self.load_report = load_pretrained(self, pretrained)

    @property
    def out_channels(self) -> int:
        return self.channels[-1]

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x1 = self.layer1(x)
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        x4 = self.layer4(x3)
        return [x1, x2, x3, x4]


def _imagenet_weights_file(name: str) -> Path:
    """Where torchvision would cache the ImageNet weights of this backbone."""
    _, weights_enum, _ = BACKBONES[name]
    url = getattr(torchvision.models, weights_enum).IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _unwrap_state_dict(obj) -> dict[str, Tensor]:
    """Accept raw state dicts and the usual wrappers ({'state_dict': ...}, {'model': ...}, ...)."""
    for key in ("state_dict", "model", "model_state_dict", "net", "backbone"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            return _unwrap_state_dict(obj[key])
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError("expected a state dict (name -> tensor) or a dict wrapping one under 'state_dict'/'model'")
    return obj


def _strip_prefixes(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Remove DataParallel / wrapper prefixes such as 'module.', 'backbone.', 'features.'."""
    cleaned = {}
    for key, value in state.items():
        for prefix in ("module.", "backbone.", "encoder.", "base.", "model."):
            while key.startswith(prefix):
                key = key[len(prefix):]
        cleaned[key] = value
    return cleaned


def load_pretrained(backbone: ResNetBackbone, pretrained: str) -> LoadReport:
    """Load ``"imagenet"`` (local torch cache only) or a local checkpoint file into ``backbone``.

    Nothing is ever downloaded: a missing file raises FileNotFoundError saying where to put it.
    """
    if pretrained == "imagenet":
        path = _imagenet_weights_file(backbone.name)
        if not path.is_file():
            _, weights_enum, _ = BACKBONES[backbone.name]
            url = getattr(torchvision.models, weights_enum).IMAGENET1K_V1.url
            raise FileNotFoundError(
                f"ImageNet weights for {backbone.name} are not in the local torch cache ({path}). "
                f"hsbs_lib never downloads at run time: fetch {url} on a machine with internet and copy it "
                f"to {path}, or pass pretrained=PATH to a local file.")
    else:
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"pretrained weights file {path} not found; expected a local .pth/.pt file")
    try:
        state = _strip_prefixes(_unwrap_state_dict(torch.load(path, map_location="cpu", weights_only=True)))
    except Exception as error:  # unpickling refused or not a state dict
        raise ValueError(f"{path}: could not read a ResNet state dict ({error})") from error

    own = backbone.state_dict()
    matched, mismatch = [], []
    loadable = {}
    for key, value in state.items():
        if key in own:
            if own[key].shape == value.shape:
                loadable[key] = value
                matched.append(key)
            else:
                mismatch.append(f"{key} {tuple(value.shape)} vs {tuple(own[key].shape)}")
    missing = [key for key in own if key not in loadable]
    unexpected = [key for key in state if key not in own]
    backbone.load_state_dict(loadable, strict=False)
    report = LoadReport(str(path), matched, missing, unexpected, mismatch)
    if not matched:
        raise ValueError(f"{path}: no tensor matched a {backbone.name} backbone; "
                         f"first keys in the file: {list(state)[:5]}")
    log.info(report.summary())
    return report
