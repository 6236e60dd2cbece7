"""``hsbs check``: validate a dataset copy before training on it.

Indexes every split (skipping nothing silently: each bad entry is listed with its reason), decodes
every image to catch truncated or fake files, and prints counts per split and class.
"""
from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass, field

import yaml

from hsbs_lib.config import load_yaml, shown, yaml_problem
from hsbs_lib.constants import progress_disabled
from hsbs_lib.data.base import BadEntry, count_by_kind
from hsbs_lib.data.datasets import canonical_dataset_name, dataset_splits, load_dataset
from hsbs_lib.data.images import ImageDecodeError
from hsbs_lib.data.labels import class_names


@dataclass
class SplitCheck:
    """What one split holds: usable images per class, bad entries, protocol drops, image sizes."""

    split: str
    counts: list[int]
    bad: list[BadEntry] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    sizes: Counter = field(default_factory=Counter)   # (width, height) -> images, when decoded

    @property
    def total(self) -> int:
        return sum(self.counts)


@dataclass
class CheckResult:
    """The result of :func:`check_dataset`; ``format()`` renders it as a table."""

    name: str
    root: str
    classes: tuple[str, ...]
    splits: dict[str, SplitCheck]
    decoded: bool

    @property
    def bad(self) -> list[BadEntry]:
        return [entry for check in self.splits.values() for entry in check.bad]

    @property
    def one_class_splits(self) -> dict[str, str]:
        """Splits whose usable images are all of one class: split -> that class. A classifier cannot learn
        from them, and scores on them say nothing about the other classes (every score reads 1.0)."""
        found = {}
        for name, check in self.splits.items():
            present = [k for k, count in enumerate(check.counts) if count]
            if len(present) == 1:
                found[name] = self.classes[present[0]]
        return found

    @property
    def ok(self) -> bool:
        """No bad entries, and a training split of more than one class (training refuses one of one class)."""
        return not self.bad and "train" not in self.one_class_splits

    def format(self) -> str:
        names = list(self.splits)
        width = max([len(c) for c in self.classes] + [5])
        columns = [max(len(n), 7) for n in names]
        lines = [f"{self.name} at {self.root}"
                 + ("" if self.decoded else " (images not decoded: --no-decode)"), ""]
        lines.append(f"{'class':<{width}}  " + "  ".join(f"{n:>{w}}" for n, w in zip(names, columns)))
        for k, class_name in enumerate(self.classes):
            lines.append(f"{class_name:<{width}}  " + "  ".join(
                f"{self.splits[n].counts[k]:>{w}}" for n, w in zip(names, columns)))
        lines.append(f"{'total':<{width}}  " + "  ".join(
            f"{self.splits[n].total:>{w}}" for n, w in zip(names, columns)))
        for name, check in self.splits.items():
            if check.dropped:
                dropped = ", ".join(f"{reason}: {count}" for reason, count in sorted(check.dropped.items()))
                lines.append(f"[{name}] dropped by the dataset's protocol (not errors): {dropped}")
            if check.sizes:
                common = ", ".join(f"{w}x{h} ({n})" for (w, h), n in check.sizes.most_common(3))
                more = f" and {len(check.sizes) - 3} other sizes" if len(check.sizes) > 3 else ""
                lines.append(f"[{name}] image sizes: {common}{more}")
        for name, class_name in self.one_class_splits.items():
            check = self.splits[name]
            lines.append(f"[{name}] holds one class only: {check.total} image{'s' if check.total != 1 else ''} of "
                         f"{class_name}, none of the other {len(self.classes) - 1} classes"
                         + (" (training needs two or more)" if name == "train" else
                            " (scores on it say nothing of the others)"))
        lines.append("")
        if not self.bad:
            lines.append("no bad entries")
        else:
            lines.append(f"{len(self.bad)} bad entries ({count_by_kind(self.bad)}; skip them with skip_bad=True / "
                         f"data.skip_bad=true):")
            for name, check in self.splits.items():
                lines += [f"  [{name}] {entry.path}: {entry.reason}" for entry in check.bad]
        return "\n".join(lines)


def _progress(iterable, total: int, description: str):
    if progress_disabled():
        return iterable
    from tqdm.auto import tqdm
    return tqdm(iterable, total=total, desc=description, unit="img", leave=False)


def check_dataset(name: str, root, *, splits: list[str] | None = None, decode: bool = True,
                  num_classes: int = 7, **options) -> CheckResult:
    """Index every split (bad entries collected, not raised), decode every image when ``decode``,
    and return counts per split and class plus every bad entry.

    Layout errors (missing root, wrong folder structure) still raise one readable error.
    """
    key = canonical_dataset_name(name)
    splits = list(splits) if splits else dataset_splits(key, root)
    if not splits:
        raise ValueError(f"{key}: no splits found under {root}")
    results: dict[str, SplitCheck] = {}
    dataset_root = root
    reported: set[tuple[str, str]] = set()     # a line every split reads (a malformed csv row) is listed once
    for split in splits:
        dataset = load_dataset(key, root, split, num_classes=num_classes, skip_bad=True, **options)
        dataset_root = dataset.root
        bad = [entry for entry in dataset.report.bad if (entry.path, entry.reason) not in reported]
        reported.update((entry.path, entry.reason) for entry in bad)
        counts = [0] * len(dataset.classes)
        sizes: Counter = Counter()
        indices = range(len(dataset))
        for index in (_progress(indices, len(dataset), f"check {key}/{split}") if decode else indices):
            if decode:
                try:
                    image = dataset.load_image(index)
                except (ImageDecodeError, OSError) as error:
                    bad.append(BadEntry(str(dataset.samples[index][0]), getattr(error, "reason", str(error))))
                    continue
                sizes[(image.shape[1], image.shape[0])] += 1
            counts[dataset.samples[index][1]] += 1
        results[split] = SplitCheck(split, counts, bad, dict(getattr(dataset, "dropped", {})), sizes)
    return CheckResult(key, str(dataset_root), class_names(num_classes), results, decode)


# ----------------------------------------------------------------------------------------------
# hsbs check
# ----------------------------------------------------------------------------------------------

def _option(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key.strip(), load_yaml(value) if value else ""
    except yaml.YAMLError as error:
        raise argparse.ArgumentTypeError(f"cannot read the value of {shown(key.strip())}: {yaml_problem(error)}") from None


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="dataset: rafdb, fer2013, ferplus, affectnet, sfew, kdef, ckplus, imagefolder")
    parser.add_argument("root", help="the dataset folder")
    parser.add_argument("--split", action="append", dest="splits", metavar="S",
                        help="split to check (repeatable; default: every split found)")
    parser.add_argument("--no-decode", action="store_true",
                        help="index only: skip decoding every image (fast, misses corrupt files)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="data settings, as in a recipe: data.num_classes=8, data.options.KEY=VALUE (adapter "
                             "options, e.g. data.options.aligned=false, data.options.label_mode=soft, "
                             "data.options.fold=0); the leading 'data.' may be left out")
    parser.add_argument("--num-classes", type=int, choices=(7, 8), default=None, help="the same as data.num_classes=N")
    parser.add_argument("--option", action="append", type=_option, default=[], metavar="KEY=VALUE",
                        help="the same as data.options.KEY=VALUE (repeatable)")


def check_settings(args: argparse.Namespace) -> tuple[int, dict]:
    """(number of classes, adapter options) from the ``key=value`` overrides and their older spellings
    ``--num-classes N`` and ``--option KEY=VALUE``; later wins."""
    num_classes = args.num_classes or 7
    options = dict(args.option)
    for item in args.overrides:
        try:
            key, value = _option(item)
        except argparse.ArgumentTypeError as error:
            raise ValueError(str(error)) from None
        key = key.removeprefix("data.")
        if key == "num_classes":
            if value not in (7, 8) or isinstance(value, bool):
                raise ValueError(f"data.num_classes expects 7 or 8, got {shown(value)}")
            num_classes = value
        elif key.startswith("options.") and len(key) > len("options."):
            options[key.removeprefix("options.")] = value
        else:
            raise ValueError(f"hsbs check takes data.num_classes=7|8 and data.options.KEY=VALUE, got {shown(key)}")
    return num_classes, options


def run_check(args: argparse.Namespace) -> int:
    num_classes, options = check_settings(args)
    result = check_dataset(args.name, args.root, splits=args.splits, decode=not args.no_decode,
                           num_classes=num_classes, **options)
    print(result.format())
    return 0 if result.ok else 1
