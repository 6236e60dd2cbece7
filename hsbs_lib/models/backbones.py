"""torchvision ResNets with feature taps on layer1..layer4 and local-only pretrained loading.

Shapes (ResNet-18, standard stem): a 224 px input gives layer1..4 maps of 64x56x56, 128x28x28,
256x14x14, 512x7x7; at 64 px they are 16, 8, 4 and 2 pixels wide. Two other stems keep small inputs
on a useful grid:

* ``stem="no_maxpool"``: torchvision's 7x7 stride-2 convolution without the max-pool (output stride 16):
  at 64 px layer1..4 are 32, 16, 8 and 4 wide, so the layer4 map that HST uses as its teacher is 4x4.
* ``stem="small"``: a 3x3 stride-1 convolution without max-pool (output stride 8): 48 px FER2013 faces
  keep a 6x6 layer4 grid, at about 7x the cost of the standard stem (docs/BENCHMARKS.md).

``width`` scales every stage (64 is torchvision's; 32 halves the channels and quarters the cost): the
SynthFER demo scale is ResNet-18, ``stem="no_maxpool"``, ``width=32`` at 64 px, which costs about what
the standard ResNet-18 costs at 64 px on a CPU while giving a 4x4 teacher.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

log = logging.getLogger(__name__)

#: name -> (torchvision builder, weights enum, blocks per stage)
BACKBONES = {
    "resnet18": ("resnet18", "ResNet18_Weights", (2, 2, 2, 2)),
    "resnet34": ("resnet34", "ResNet34_Weights", (3, 4, 6, 3)),
    "resnet50": ("resnet50", "ResNet50_Weights", (3, 4, 6, 3)),
}
#: stem -> stride of layer1 (the standard stem: stride-2 conv and stride-2 max-pool)
STEMS = {"standard": 4, "no_maxpool": 2, "small": 1}
TORCHVISION_WIDTH = 64


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


def stage_sizes(input_size: int, *, stem: str = "standard") -> tuple[int, int, int, int]:
    """Side of the layer1..4 maps of a ResNet with ``stem`` for a square input (each stride-2 step rounds up)."""
    size = input_size
    if stem != "small":
        size = math.ceil(size / 2)      # the 7x7 stride-2 convolution
    if stem == "standard":
        size = math.ceil(size / 2)      # the stride-2 max-pool
    sizes = [size]
    for _ in range(3):
        size = math.ceil(size / 2)
        sizes.append(size)
    return tuple(sizes)


def cell_stride(map_size: int, input_size: int) -> int:
    """The stride (a power of two) of a stage whose map is ``map_size`` cells wide for ``input_size`` pixels."""
    return 2 ** max(0, round(math.log2(input_size / map_size)))


def cells_to_pixels(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Resample ResNet stage maps (B, h, w) onto the input's pixel grid ``size`` = (H, W), bilinearly.

    Every stride-2 layer of a torchvision ResNet (7x7 conv with padding 3, 3x3 conv or max-pool with
    padding 1, 1x1 shortcut) centres output cell i on input pixel 2i, so cell i of a stride-s map sits on
    pixel s*i, not at the middle of the block [s*i, s*(i+1)) that a plain resize assumes. At 64 px
    layer4's cells sit on pixels 0, 16, 32 and 48: a plain resize shifts them 7.5 px down and right, which
    puts the mouth's evidence on the chin. Pixels past the last cell take its value.
    """
    maps = maps.float()
    height, width = size
    batch, h, w = maps.shape
    coordinates = []
    for cells, pixels in ((w, width), (h, height)):
        positions = torch.arange(pixels, dtype=torch.float32, device=maps.device) / cell_stride(cells, pixels)
        coordinates.append((2 * positions.clamp(max=cells - 1) / max(cells - 1, 1) - 1) if cells > 1
                           else torch.zeros(pixels, device=maps.device))
    grid_x, grid_y = coordinates
    grid = torch.stack(torch.broadcast_tensors(grid_x[None, :], grid_y[:, None]), dim=-1)
    return F.grid_sample(maps[:, None], grid.expand(batch, -1, -1, -1), mode="bilinear",
                         align_corners=True)[:, 0]


def _narrow_stages(net: torchvision.models.ResNet, width: int, blocks: tuple[int, ...]) -> None:
    """Rebuild ``net``'s stem and stages with ``width`` channels in layer1 (torchvision's own builder)."""
    block = type(net.layer1[0])
    net.inplanes = width
    net.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    net.bn1 = nn.BatchNorm2d(width)
    for index, count in enumerate(blocks):
        stage = net._make_layer(block, width * 2 ** index, count, stride=1 if index == 0 else 2)
        setattr(net, f"layer{index + 1}", stage)
    for module in net.modules():  # torchvision's initialisation, for the rebuilt modules
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")


class ResNetBackbone(nn.Module):
    """A torchvision ResNet returning the four stage outputs.

    forward(x: (B, 3, H, W)) -> [x1, x2, x3, x4] with strides 4, 8, 16, 32 for the standard stem
    (2, 4, 8, 16 for ``no_maxpool``; 1, 2, 4, 8 for ``small``); ``strides`` and ``channels`` say which.
    """

    def __init__(self, name: str = "resnet18", pretrained: str | None = None, *, stem: str = "standard",
                 width: int = TORCHVISION_WIDTH):
        super().__init__()
        if name not in BACKBONES:
            raise KeyError(f"unknown backbone '{name}'; available: {', '.join(BACKBONES)}")
        if stem not in STEMS:
            raise ValueError(f"unknown stem '{stem}'; choose one of {', '.join(STEMS)}")
        if int(width) < 8:
            raise ValueError(f"backbone width must be at least 8 channels, got {width}")
        if pretrained and width != TORCHVISION_WIDTH:
            raise ValueError(f"pretrained weights need the torchvision width {TORCHVISION_WIDTH}, got width={width}")
        builder, _, blocks = BACKBONES[name]
        net = getattr(torchvision.models, builder)(weights=None)
        if width != TORCHVISION_WIDTH:
            _narrow_stages(net, int(width), blocks)
        self.name = name
        self.stem = stem
        self.width = int(width)
        expansion = type(net.layer1[0]).expansion    # 1 for BasicBlock, 4 for Bottleneck
        self.channels: tuple[int, int, int, int] = tuple(int(width) * 2 ** index * expansion for index in range(4))
        self.strides: tuple[int, int, int, int] = tuple(STEMS[stem] * 2 ** index for index in range(4))
        if stem == "small":
            net.conv1 = nn.Conv2d(3, net.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        if stem != "standard":
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

    def stage_sizes(self, input_size: int) -> tuple[int, int, int, int]:
        """Side of the layer1..4 maps for a square ``input_size`` input."""
        return stage_sizes(input_size, stem=self.stem)

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
