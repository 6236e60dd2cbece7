"""What each method's paper reports: quoted anchors, never measured by this package.

``hsbs compare`` prints them (a ``published:`` block of a comparison plan) beside the measured rows, so a
reader sees how far a run is from the paper's setting; docs/BENCHMARKS.md holds the same table. The
numbers are overall test accuracy in percent as printed by each paper, with its own backbone,
pretraining, input size, schedule and epoch selection (the released CLCL script keeps the epoch that
scores best on the test split); this package selects on a validation split and scores the test split
once. HSBS has no published numbers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

CLCL_SOURCE = "Xie et al., IEEE TIP 33:2514-2529, 2024"
MFER_SOURCE = "Xu et al., IEEE TAFFC 16(2):683-696 (online 2024); XuJ1E/MFER README"
PHANET_SOURCE = "Liu et al., arXiv 1905.10059 (abstract)"
#: Methods with no published numbers to quote.
UNPUBLISHED = ("hsbs",)


@dataclass(frozen=True)
class PublishedResult:
    """One quoted number: ``accuracy`` in percent on ``dataset`` (a configs/datasets name where one fits)."""

    method: str
    dataset: str
    accuracy: float
    backbone: str
    pretraining: str
    source: str


PUBLISHED_RESULTS: tuple[PublishedResult, ...] = (
    *(PublishedResult("clcl", dataset, accuracy, "ResNet-18", "ImageNet (the released code's torchvision weights)",
                      CLCL_SOURCE)
      for dataset, accuracy in (("rafdb", 92.21), ("ferplus", 89.50), ("sfew", 62.82), ("affectnet", 65.29))),
    *(PublishedResult("mfer", dataset, accuracy, "ConvNeXt-Base", "MS-Celeb-1M", MFER_SOURCE)
      for dataset, accuracy in (("rafdb", 92.08), ("ferplus", 91.09), ("affectnet7", 67.06), ("affectnet8", 63.15))),
    *(PublishedResult("phanet", dataset, accuracy, "not named in the abstract", "not named in the abstract",
                      PHANET_SOURCE)
      for dataset, accuracy in (("kdef", 88.5), ("affectnet", 54.82), ("sfew", 31.25), ("bu3dfe", 84.92),
                                ("multipie", 93.53))),
)

PUBLISHED_METHODS = tuple(dict.fromkeys(result.method for result in PUBLISHED_RESULTS)) + UNPUBLISHED


def published_results(datasets: Iterable[str], methods: Iterable[str] | None = None) -> list[PublishedResult]:
    """The quoted results on ``datasets`` for ``methods`` (default: every method with published numbers), in
    the order the methods are given. A dataset named ``affectnet7`` or ``affectnet8`` also matches a
    paper that says only "AffectNet"."""
    wanted = list(datasets)
    chosen = []
    for method in (methods if methods is not None else PUBLISHED_METHODS):
        for dataset in wanted:
            aliases = {dataset, "affectnet"} if dataset.startswith("affectnet") else {dataset}
            chosen += [result for result in PUBLISHED_RESULTS if result.method == method and result.dataset in aliases]
    return list(dict.fromkeys(chosen))


def format_published(datasets: Sequence[str], methods: Sequence[str] | None = None) -> str:
    """The ``published:`` block: a markdown table of quoted numbers, marked as not measured; methods with
    nothing published on these datasets get a line saying so."""
    methods = list(methods) if methods is not None else list(PUBLISHED_METHODS)
    results = published_results(datasets, methods)
    lines = ["published: quoted from the papers, NOT measured here (overall test accuracy, percent, with each "
             "paper's own backbone, pretraining, schedule and epoch selection):", "",
             "| method | dataset | accuracy (quoted) | backbone | pretraining | source |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r.method} | {r.dataset} | {r.accuracy:.2f} | {r.backbone} | {r.pretraining} | {r.source} |"
              for r in results]
    missing = [method for method in methods if not any(r.method == method for r in results)]
    lines += [f"| {method} | {', '.join(datasets)} | none published | | | |" for method in missing]
    return "\n".join(lines)
