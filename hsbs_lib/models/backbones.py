"""torchvision ResNets and ConvNeXts with feature taps on layer1..layer4 and local-only pretrained loading.

Shapes (ResNet-18, standard stem): a 224 px input gives layer1..4 maps of 64x56x56, 128x28x28,
256x14x14, 512x7x7; at 64 px they are 16, 8, 4 and 2 pixels wide. Three other stems keep small inputs
on a useful grid:

* ``stem="no_maxpool"``: torchvision's 7x7 stride-2 convolution without the max-pool (output stride 16):
  at 64 px layer1..4 are 32, 16, 8 and 4 wide, so the layer4 map that HST uses as its teacher is 4x4.
* ``stem="pooled"``: the same grids as ``no_maxpool`` (output stride 16), reached the standard way round:
  the 7x7 convolution at stride 1, then the 3x3 stride-2 max-pool. The max-pool keeps the strongest of
  neighbouring fine-grained responses; on SynthFER at 65 px it left the majority-class plateau within two
  epochs where the no_maxpool stem did not (docs/BENCHMARKS.md, "Leaving the majority-class plateau").
* ``stem="small"``: a 3x3 stride-1 convolution without max-pool (output stride 8): 48 px FER2013 faces
  keep a 6x6 layer4 grid, at about 7x the cost of the standard stem (docs/BENCHMARKS.md).

``width`` scales every stage (64 is torchvision's; 32 halves the channels and quarters the cost): the
SynthFER demo scale is ResNet-18, ``stem="no_maxpool"``, ``width=32`` at 64 px, which costs about what
the standard ResNet-18 costs at 64 px on a CPU while giving a 4x4 teacher.

ConvNeXt (``convnext_tiny``, ``convnext_base``; :class:`ConvNeXtBackbone`) taps its four stages under the
same names, layer1..layer4 (a 224 px input gives 96x56x56 ... 768x7x7 for tiny, 128 ... 1024 channels for
base), so every method runs on it unchanged. Its patchify stem and 2x2 downsampling layers make block
cells (cell i covers pixels [s*i, s*(i+1))), not the ResNet alignment of :func:`cells_to_pixels`.
:func:`build_backbone` picks the family from the name.
"""
from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from hsbs_lib.config import shown
from hsbs_lib.models.weights_file import load_weights_file

log = logging.getLogger(__name__)

#: name -> (torchvision builder, weights enum, blocks per stage)
BACKBONES = {
    "resnet18": ("resnet18", "ResNet18_Weights", (2, 2, 2, 2)),
    "resnet34": ("resnet34", "ResNet34_Weights", (3, 4, 6, 3)),
    "resnet50": ("resnet50", "ResNet50_Weights", (3, 4, 6, 3)),
}
#: ConvNeXt name -> (torchvision builder, weights enum)
CONVNEXTS = {
    "convnext_tiny": ("convnext_tiny", "ConvNeXt_Tiny_Weights"),
    "convnext_base": ("convnext_base", "ConvNeXt_Base_Weights"),
}
#: stem -> stride of layer1 (the standard stem: stride-2 conv and stride-2 max-pool)
STEMS = {"standard": 4, "no_maxpool": 2, "pooled": 2, "small": 1}
#: stem -> (kernel, stride, padding) of ConvNeXt's patchify convolution, at the same layer1 strides as STEMS.
#: "no_maxpool" keeps the 4x4 kernel so ImageNet weights still load; "small" is a 3x3 stride-1 convolution.
CONVNEXT_STEMS = {"standard": (4, 4, 0), "no_maxpool": (4, 2, 1), "small": (3, 1, 1)}
TORCHVISION_WIDTH = 64
#: the original ConvNeXt block's parts -> their index in torchvision's CNBlock.block
_ORIGINAL_BLOCK_PARTS = {"dwconv": "0", "norm": "2", "pwconv1": "3", "pwconv2": "5"}


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
            raise KeyError(f"unknown backbone {shown(name)}; available: {', '.join(BACKBONES)}")
        if stem not in STEMS:
            raise ValueError(f"unknown stem '{stem}'; choose one of {', '.join(STEMS)} (a config's model.stem may "
                             f"also be auto: chosen by data.input_size)")
        if int(width) < 8:
            raise ValueError(f"backbone width must be at least 8 channels, got {width}")
        if pretrained and width != TORCHVISION_WIDTH:
            raise ValueError(f"pretrained weights need the torchvision width {TORCHVISION_WIDTH}, got width={width}")
        builder, _, blocks = BACKBONES[name]
        net = getattr(torchvision.models, builder)(weights=None)
        if width != TORCHVISION_WIDTH:
            _narrow_stages(net, int(width), blocks)
        self.name = name
        self.stem = self.stem_name = stem
        self.width = int(width)
        expansion = type(net.layer1[0]).expansion    # 1 for BasicBlock, 4 for Bottleneck
        self.channels: tuple[int, int, int, int] = tuple(int(width) * 2 ** index * expansion for index in range(4))
        self.strides: tuple[int, int, int, int] = tuple(STEMS[stem] * 2 ** index for index in range(4))
        if stem == "small":
            net.conv1 = nn.Conv2d(3, net.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        if stem == "pooled":
            net.conv1 = nn.Conv2d(3, net.conv1.out_channels, kernel_size=7, stride=1, padding=3, bias=False)
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")   # torchvision's
        if stem in ("no_maxpool", "small"):
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

    def forward_stem(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> the input of layer1 (B, C0, H/s, W/s)."""
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.forward_stem(x)
        x1 = self.layer1(x)
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        x4 = self.layer4(x3)
        return [x1, x2, x3, x4]


class ConvNeXtBackbone(nn.Module):
    """A torchvision ConvNeXt returning the four stage outputs, under the ResNets' names.

    ``stem`` is the patchify convolution with its LayerNorm; ``layer1`` the first stage's blocks;
    ``layer2..4`` each a 2x2 stride-2 downsampling (LayerNorm, conv) followed by the stage's blocks.
    forward(x: (B, 3, H, W)) -> [x1, x2, x3, x4] with strides 4, 8, 16, 32 for the standard stem and
    ``channels`` from the model (96, 192, 384, 768 for tiny; 128, 256, 512, 1024 for base).

    Args:
        name: convnext_tiny or convnext_base.
        pretrained: None, "imagenet" (torchvision's file in the local torch cache) or a local file.
        stem: "standard" (4x4 stride 4, torchvision's), "no_maxpool" (4x4 stride 2) or "small" (3x3 stride 1).
        width: must be torchvision's (64, the ResNet convention): ConvNeXt has no narrow variants.
        drop_path: stochastic depth rate, ramped linearly over the blocks as torchvision and timm do
            (MFER trains ConvNeXt-Base at 0.25); 0 turns it off.
    """

    def __init__(self, name: str = "convnext_tiny", pretrained: str | None = None, *, stem: str = "standard",
                 width: int = TORCHVISION_WIDTH, drop_path: float = 0.0):
        super().__init__()
        if name not in CONVNEXTS:
            raise KeyError(f"unknown backbone {shown(name)}; available: {', '.join(available_backbones())}")
        if stem not in CONVNEXT_STEMS:
            raise ValueError(f"unknown stem '{stem}'; choose one of {', '.join(CONVNEXT_STEMS)}")
        if int(width) != TORCHVISION_WIDTH:
            raise ValueError(f"backbone_width scales ResNets only; {name} has torchvision's widths, "
                             f"leave backbone_width at {TORCHVISION_WIDTH} (got {width})")
        if not 0.0 <= float(drop_path) < 1.0:
            raise ValueError(f"drop_path is a probability in [0, 1), got {drop_path}")
        builder, _ = CONVNEXTS[name]
        # torchvision's builders default to 0.1 (tiny) and 0.5 (base): the rate is always passed explicitly.
        net = getattr(torchvision.models, builder)(weights=None, stochastic_depth_prob=float(drop_path))
        features = net.features
        if stem != "standard":
            kernel, stride, padding = CONVNEXT_STEMS[stem]
            patchify = features[0][0]
            features[0][0] = nn.Conv2d(3, patchify.out_channels, kernel_size=kernel, stride=stride, padding=padding)
        self.name = name
        self.stem_name = stem
        self.width = TORCHVISION_WIDTH
        self.drop_path = float(drop_path)
        self.stem = features[0]
        self.layer1 = features[1]
        self.layer2 = nn.Sequential(features[2], features[3])
        self.layer3 = nn.Sequential(features[4], features[5])
        self.layer4 = nn.Sequential(features[6], features[7])
        self.channels: tuple[int, int, int, int] = tuple(
            int(stage[-1].block[0].out_channels) for stage in (features[1], features[3], features[5], features[7]))
        self.strides: tuple[int, int, int, int] = tuple(STEMS[stem] * 2 ** index for index in range(4))
        self.load_report: LoadReport | None = None
        if pretrained:
            self.load_report = load_pretrained(self, pretrained)

    @property
    def out_channels(self) -> int:
        return self.channels[-1]

    def stage_sizes(self, input_size: int) -> tuple[int, int, int, int]:
        """Side of the layer1..4 maps for a square ``input_size`` input (the strided convolutions round down)."""
        kernel, stride, padding = CONVNEXT_STEMS[self.stem_name]
        size = (input_size + 2 * padding - kernel) // stride + 1
        sizes = [size]
        for _ in range(3):
            size //= 2
            sizes.append(size)
        return tuple(sizes)

    @staticmethod
    def remap_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Checkpoint names -> this module's (``stem``, ``layer1..4``).

        Two layouts are read: torchvision's (``features.N.*``) and the original ConvNeXt code's that timm
        and MFER's release use (``downsample_layers.i.*``, ``stages.i.j.{dwconv,norm,pwconv1,pwconv2,gamma}``).
        Anything else (classifier heads, the final norm, MFER's attention) is left as is and reported.
        """
        renamed = {}
        for key, value in state.items():
            if match := re.match(r"features\.(\d)\.(.*)", key):
                index, rest = int(match.group(1)), match.group(2)
                if index == 0:
                    key = f"stem.{rest}"
                elif index == 1:
                    key = f"layer1.{rest}"
                else:  # 2, 3 -> layer2.0, layer2.1; 4, 5 -> layer3; 6, 7 -> layer4
                    key = f"layer{index // 2 + 1}.{(index - 2) % 2}.{rest}"
            elif match := re.match(r"downsample_layers\.(\d)\.(.*)", key):
                index, rest = int(match.group(1)), match.group(2)
                key = f"stem.{rest}" if index == 0 else f"layer{index + 1}.0.{rest}"
            elif match := re.match(r"stages\.(\d)\.(\d+)\.(dwconv|norm|pwconv1|pwconv2|gamma)(.*)", key):
                stage, block, part, rest = match.groups()
                prefix = "layer1" if stage == "0" else f"layer{int(stage) + 1}.1"
                if part == "gamma":   # layer scale: (C,) in the original code, (C, 1, 1) in torchvision
                    key, value = f"{prefix}.{block}.layer_scale", value.reshape(-1, 1, 1)
                else:
                    key = f"{prefix}.{block}.block.{_ORIGINAL_BLOCK_PARTS[part]}{rest}"
            renamed[key] = value
        return renamed

    def forward_stem(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> the input of layer1 (B, C1, H/s, W/s)."""
        return self.stem(x)

    def forward(self, x: Tensor) -> list[Tensor]:
        x1 = self.layer1(self.stem(x))
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        x4 = self.layer4(x3)
        return [x1, x2, x3, x4]


def zero_init_residual_(backbone: nn.Module) -> int:
    """Set the scale of the last BatchNorm of every residual block to 0, so each block starts as the
    identity (torchvision's ``zero_init_residual``; Goyal et al. 2017, "Accurate, Large Minibatch SGD").
    Returns how many blocks were changed (0 for a ConvNeXt, whose blocks end in a layer scale, not a BatchNorm).
    """
    changed = 0
    for module in backbone.modules():
        if isinstance(module, torchvision.models.resnet.Bottleneck):
            nn.init.zeros_(module.bn3.weight)
            changed += 1
        elif isinstance(module, torchvision.models.resnet.BasicBlock):
            nn.init.zeros_(module.bn2.weight)
            changed += 1
    return changed


def available_backbones() -> list[str]:
    """Every name :func:`build_backbone` accepts."""
    return [*BACKBONES, *CONVNEXTS]


def is_convnext(name: str) -> bool:
    return name in CONVNEXTS


def build_backbone(name: str = "resnet18", pretrained: str | None = None, *, stem: str = "standard",
                   width: int = TORCHVISION_WIDTH, drop_path: float = 0.0) -> nn.Module:
    """The ResNet or ConvNeXt backbone called ``name`` (see :func:`available_backbones`)."""
    if name in CONVNEXTS:
        return ConvNeXtBackbone(name, pretrained, stem=stem, width=width, drop_path=drop_path)
    if name not in BACKBONES:
        raise KeyError(f"unknown backbone {shown(name)}; available: {', '.join(available_backbones())}")
    if drop_path:
        raise ValueError(f"drop_path (stochastic depth) applies to ConvNeXt backbones, not {name}")
    return ResNetBackbone(name, pretrained, stem=stem, width=width)


def _imagenet_weights_url(name: str) -> str:
    weights_enum = BACKBONES[name][1] if name in BACKBONES else CONVNEXTS[name][1]
    return getattr(torchvision.models, weights_enum).IMAGENET1K_V1.url


def _imagenet_weights_file(name: str) -> Path:
    """Where torchvision would cache the ImageNet weights of this backbone."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(_imagenet_weights_url(name))


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


def load_pretrained(backbone: nn.Module, pretrained: str) -> LoadReport:
    """Load ``"imagenet"`` (local torch cache only) or a local checkpoint file into ``backbone``.

    Nothing is ever downloaded: a missing file raises FileNotFoundError saying where to put it.
    """
    if pretrained == "imagenet":
        path = _imagenet_weights_file(backbone.name)
        if not path.is_file():
            url = _imagenet_weights_url(backbone.name)
            raise FileNotFoundError(
                f"ImageNet weights for {backbone.name} are not in the local torch cache ({path}). "
                f"hsbs_lib never downloads at run time: fetch {url} on a machine with internet and copy it "
                f"to {path}, or pass pretrained=PATH to a local file.")
    else:
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"pretrained weights file {path} not found; expected a local .pth/.pt file")
    stored = load_weights_file(path, f"{backbone.name} weights")
    try:
        state = _strip_prefixes(_unwrap_state_dict(stored))
    except Exception as error:  # not a state dict
        raise ValueError(f"{path}: could not read a {backbone.name} state dict ({error})") from error
    if hasattr(backbone, "remap_state_dict"):
        state = backbone.remap_state_dict(state)

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
