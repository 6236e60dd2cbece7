"""Values with one meaning across the package, each defined once here: normalisation statistics, layer
names, the minority classes, and the environment flags the package reads."""
from __future__ import annotations

import os

#: The four ResNet stages every model exposes as ``features/<name>`` (and ``attention/<name>``).
STAGE_NAMES: tuple[str, ...] = ("layer1", "layer2", "layer3", "layer4")

#: torchvision's ImageNet statistics, used to normalise every input (pretrained or not).
IMAGENET_NORMALIZATION: dict[str, list[float]] = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}

#: The rare classes of RAF-DB-like imbalance, reported on their own in tables and figures.
MINORITY_CLASSES: tuple[str, ...] = ("fear", "disgust")


def progress_disabled() -> bool:
    """True when ``HSBS_NO_PROGRESS`` is set to 1 / true / yes (tests and CI set it), or in a SMOKE run:
    a notebook saved after a SMOKE run would otherwise keep its progress bars frozen at 0 %."""
    return os.environ.get("HSBS_NO_PROGRESS", "0").strip().lower() in ("1", "true", "yes") or smoke_run()


def smoke_run() -> bool:
    """True when ``SMOKE`` is set to anything but 0 / false / no (headless notebook runs, the tests)."""
    return os.environ.get("SMOKE", "").strip().lower() not in ("", "0", "false", "no")
