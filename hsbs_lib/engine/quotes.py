"""Numbers quoted in prose, tied to the reference file they come from.

Notebook markdown and the answer key quote results of ``notebooks/reference/``. Each quoted number carries a
marker right after it, an HTML comment that renders as nothing::

    both models reach 80.0 %<!-- ref: demo_baseline/eval.json:accuracy --> accuracy

The marker names a *source*: ``FILE:PATH``, where ``FILE`` is a reference file (``.json`` or ``.csv``) and
``PATH`` is a dotted path into it. Short names stand for the usual files: ``ablation``, ``methods`` and
``control`` (``synthfer_ablation.json``, ``synthfer_methods.json``, ``synthfer_control.json``), ``demo_baseline`` and ``demo_hsbs`` (their
``eval.json``), ``demo_baseline/metrics`` (its ``metrics.csv``). A path segment is a dict key, a row name of a
summary file (``ablation:hsbs.mean_class_accuracy_mean``), a list index (``-1`` = the last row of a
``metrics.csv``), ``KEY=VALUE`` (the list element whose ``KEY`` is ``VALUE``) or ``sum`` (the sum of a
list). Two sources joined by `` / `` or `` - `` (spaces around the operator) give a ratio or a
difference. The quoted number matches when the source, or 100 times it (a percentage or points), rounds
to it at the number of decimals quoted; a leading ``+`` or ``-`` is part of the number.

``resolve_quote`` gives a source's value and ``format_quote`` a number as prose quotes it; ``check_quotes``
lists the markers of a text whose number does not match, and ``unmarked_reference_numbers`` the
decimals of a text that equal a reference value but carry no marker (a new quote written by hand).
"""
from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from hsbs_lib.engine.expected import reference_dir

MARKER = re.compile(r"<!--\s*ref:\s*(?P<source>.+?)\s*-->")
NOT_A_QUOTE = re.compile(r"<!--\s*not-ref\s*-->")
# A number as prose writes it: optional sign (ASCII or Unicode minus), digits, optional decimals.
NUMBER = re.compile(r"(?<![\w.])(?P<number>[+\-\u2212]?\d+(?:\.\d+)?)(?![\w])")
# What may stand between a number and its marker: a percent sign, a unit, spaces, closing punctuation.
BETWEEN = re.compile(r"^[\s%*)\]]*(?:points?|px|times|x)?[\s%*)\]]*$")


@dataclass(frozen=True)
class QuoteProblem:
    where: str
    number: str
    source: str
    value: float | None
    reason: str

    def __str__(self) -> str:
        value = "" if self.value is None else f" (the source holds {self.value:.6g})"
        return f"{self.where}: {self.number} <!-- ref: {self.source} -->: {self.reason}{value}"


@lru_cache(maxsize=None)
def _load(file: str, root: str) -> object:
    path = Path(root) / file
    if not path.is_file():
        raise KeyError(f"{file}: no such reference file")
    if path.suffix == ".csv":
        with path.open(newline="") as handle:
            return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(handle)]
    return json.loads(path.read_text())


def _number(text: str):
    try:
        return float(text)
    except ValueError:
        return text


FILE_ALIASES = {"ablation": "synthfer_ablation.json", "methods": "synthfer_methods.json",
                "control": "synthfer_control.json"}


def _file(name: str) -> str:
    if name in FILE_ALIASES:
        return FILE_ALIASES[name]
    if "." in name:
        return name
    return f"{name}.csv" if name.endswith("/metrics") else f"{name}/eval.json"


def _walk(value: object, segment: str) -> object:
    if isinstance(value, dict) and segment not in value and isinstance(value.get("rows"), list):
        value = _walk(value["rows"], f"row={segment}")
        return value
    if segment == "sum":
        return float(sum(value))
    if isinstance(value, list):
        if "=" in segment:
            key, wanted = segment.split("=", 1)
            for item in value:
                if isinstance(item, dict) and str(item.get(key)) == wanted:
                    return item
            raise KeyError(f"no element with {key}={wanted}")
        return value[int(segment)]
    if isinstance(value, dict):
        return value[segment]
    raise KeyError(f"cannot index {type(value).__name__} with {segment!r}")


def _resolve_one(source: str, root: Path) -> float:
    file, _, path = source.strip().partition(":")
    value = _load(_file(file), str(root))
    for segment in filter(None, path.split(".")):
        value = _walk(value, segment)
    if not isinstance(value, (int, float)):
        raise KeyError(f"{source}: not a number ({value!r})")
    return float(value)


def resolve_quote(source: str, root: str | Path | None = None) -> float:
    """The value a marker's source names: ``FILE:PATH``, or two of them joined by `` / `` or `` - ``."""
    root = Path(root) if root is not None else reference_dir()
    for operator in (" / ", " - "):
        if operator in source:
            left, right = source.split(operator, 1)
            a, b = _resolve_one(left, root), _resolve_one(right, root)
            return a / b if operator == " / " else a - b
    return _resolve_one(source, root)


def _decimals(number: str) -> int:
    return len(number.split(".", 1)[1]) if "." in number else 0


def quote_matches(number: str, value: float) -> bool:
    """Whether ``number`` (as written) is ``value``, or 100 times it, rounded at the decimals it shows."""
    quoted = float(number.replace("\u2212", "-"))
    half = 0.5 * 10 ** -_decimals(number) + 1e-9
    return any(abs(quoted - scaled) <= half for scaled in (value, 100 * value))


def format_quote(source: str, decimals: int = 1, *, percent: bool = False, sign: bool = False) -> str:
    """A reference value as prose quotes it (``percent``: times 100; ``sign``: a leading +)."""
    value = resolve_quote(source) * (100 if percent else 1)
    return f"{value:+.{decimals}f}" if sign else f"{value:.{decimals}f}"


def quoted_numbers(text: str) -> Iterator[tuple[str, str]]:
    """(number, source) for every marker of ``text``: the number written just before the marker."""
    for marker in MARKER.finditer(text):
        before = MARKER.sub("", text[:marker.start()])
        numbers = list(NUMBER.finditer(before))
        if not numbers or not BETWEEN.match(before[numbers[-1].end():]):
            yield "", marker.group("source")
        else:
            yield numbers[-1].group("number"), marker.group("source")


def check_quotes(text: str, where: str = "", root: str | Path | None = None) -> list[QuoteProblem]:
    """Every marker of ``text`` whose number does not match its source, or whose source does not resolve."""
    problems = []
    for number, source in quoted_numbers(text):
        if not number:
            problems.append(QuoteProblem(where, number, source, None, "no number right before the marker"))
            continue
        try:
            value = resolve_quote(source, root)
        except (KeyError, IndexError, ValueError) as error:
            problems.append(QuoteProblem(where, number, source, None, f"source does not resolve: {error}"))
            continue
        if not quote_matches(number, value):
            problems.append(QuoteProblem(where, number, source, value, "the number differs from its source"))
    return problems


def _leaves(value: object) -> Iterator[float]:
    if isinstance(value, dict):
        for item in value.values():
            yield from _leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from _leaves(item)
    elif isinstance(value, float) and math.isfinite(value):
        yield value


@lru_cache(maxsize=None)
def reference_values(root: str | None = None) -> tuple[float, ...]:
    """Every non-integer number of the reference's JSON files (metrics, scores, statistics)."""
    folder = Path(root) if root is not None else reference_dir()
    values = set()
    for path in folder.rglob("*.json"):
        if path.name == "manifest.json":
            continue
        values.update(v for v in _leaves(json.loads(path.read_text())) if v != int(v))
    return tuple(sorted(values))


def _significant_digits(number: str) -> int:
    return len(number.lstrip("+-\u2212").replace(".", "").lstrip("0"))


def unmarked_reference_numbers(text: str, root: str | Path | None = None, min_digits: int = 3) -> list[str]:
    """Decimals of ``text`` (at least ``min_digits`` significant digits) that carry no marker but equal a
    reference value (or 100 times one) at their precision: quotes that a drift would leave behind silently.
    A number followed by ``<!-- not-ref -->`` is not a quote (a coincidence)."""
    values = reference_values(str(root) if root is not None else None)
    hits = []
    for match in NUMBER.finditer(text):
        number = match.group("number")
        if "." not in number or _significant_digits(number) < min_digits:
            continue
        after = text[match.end():match.end() + 200]
        if re.match(r"[\s%*)\]]*(?:points?|px|times|x)?[\s%*)\]]*<!--\s*(ref:|not-ref)", after):
            continue
        if any(quote_matches(number, value) for value in values):
            hits.append(number)
    return hits
