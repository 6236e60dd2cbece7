"""``hsbs compare``: one recipe, several methods or ablation rows, several seeds, one table with statistics.

A comparison config names a base recipe, overrides applied to every row, and the rows themselves:

    base: configs/synthfer_baseline.yaml     # or a composition: {data: fer2013, method: baseline}
    overrides: [train.epochs=8]
    out: runs/compare_synthfer
    reference: baseline          # the row every other row is compared with (default: baseline, else the first)
    rows:
      baseline: {model.name: baseline}
      hsbs:     {model.name: hsbs}

A row's values may name ``{out}`` (the comparison's folder) and ``{seed}`` (the run's seed), e.g. a teacher
taken from the same comparison: ``model.options.hst_teacher_checkpoint: "{out}/baseline/seed{seed}"``.

Each (row, seed) trains into OUT/ROW/seedS; a finished run (eval.json present, same recipe in its
config.yaml) is reused and an interrupted one (its last.pt of the same recipe, no eval.json) is resumed from
its last saved epoch, so the command can be interrupted and re-run without losing more than an epoch. The
tables report, per metric of the test split (scored once per run, for the checkpoint its validation split
selected):

* mean and sample standard deviation over seeds;
* the difference to the reference row, paired by seed (seed s of a row against seed s of the reference,
  which saw the same data order and initialisation stream), with its 95% confidence interval
  (Student t on the paired differences) and the paired t-test's p-value. An interval that contains 0 is
  reported as "no difference";
* with ``--diagnostics`` (the default for SynthFER), the attention scores of every backbone stage against
  the expression masks and the statistics of BSA's batch similarity, mean ± std over seeds
  (:mod:`hsbs_lib.engine.diagnostics`), and the same stages at one resolution: the pointing game with a
  one-cell tolerance on each stage's own grid, each stage pooled onto layer4's grid, and layer4 upsampled
  onto each stage's grid, with their paired differences.

A plan may also name the papers' own numbers to print beside the measured rows, marked as quoted, not
measured (:mod:`hsbs_lib.engine.published`)::

    published: {datasets: [rafdb], methods: [clcl, mfer, hsbs]}     # methods: default every method
"""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import yaml
from scipy import stats

from hsbs_lib.config import load_config, read_yaml_file
from hsbs_lib.constants import MINORITY_CLASSES
from hsbs_lib.data.labels import class_names
from hsbs_lib.engine import train
from hsbs_lib.engine.build import build_model, resolve_device
from hsbs_lib.engine.cost import count_macs, count_parameters, measure_inference, measure_training
from hsbs_lib.engine.diagnostics import run_diagnostics
from hsbs_lib.engine.log import metrics_of, numeric_column
from hsbs_lib.engine.published import PUBLISHED_METHODS, format_published
from hsbs_lib.engine.run_folder import finished_run_of, resumable_run_of
from hsbs_lib.outputs import OutputFolder, plain_name

METRICS = ("accuracy", "mean_class_accuracy", "macro_f1")
METRIC_NAMES = {"accuracy": "accuracy", "mean_class_accuracy": "mean class acc.", "macro_f1": "macro-F1"}
# The validation split's scores of the selected checkpoint (eval.json "validation"): where choices are made.
VAL_METRICS = tuple(f"val_{metric}" for metric in METRICS)
ATTENTION_SCORES = ("energy_share", "pointing_hit_rate", "outer_ring_share")
# The equal-resolution scores (hsbs_lib.engine.saliency.score_equal_resolution), one table each.
EQUAL_RESOLUTION_TABLES = {
    "One-cell pointing on the stage's own grid": ("pointing_hit_rate_1cell",),
    "The stage pooled to layer4's grid (as HST pools it): energy / pointing / one-cell pointing":
        ("teacher_grid_energy_share", "teacher_grid_pointing_hit_rate", "teacher_grid_pointing_hit_rate_1cell"),
    "Layer4 upsampled to the stage's grid: energy / pointing / one-cell pointing":
        ("teacher_upsampled_energy_share", "teacher_upsampled_pointing_hit_rate",
         "teacher_upsampled_pointing_hit_rate_1cell"),
}
EQUAL_RESOLUTION_SCORES = tuple(score for scores in EQUAL_RESOLUTION_TABLES.values() for score in scores)
BSA_STATISTICS = ("row_entropy", "max_column_mass", "same_to_different")


@dataclass
class ComparePlan:
    base: str | dict[str, str]          # a recipe file, or {data: ..., method: ...}
    out: str
    rows: dict[str, list[str]]
    overrides: list[str] = field(default_factory=list)
    reference: str | None = None
    published: dict[str, list[str] | None] | None = None   # {datasets: [...], methods: [...] or None}
    # a confirmation plan (hsbs choose): {plan, seeds, metric, candidates, chosen}
    selection: dict[str, Any] | None = None

    def reference_row(self) -> str:
        if self.reference is not None:
            return self.reference
        return "baseline" if "baseline" in self.rows else next(iter(self.rows))


def load_plan(path: str | Path) -> ComparePlan:
    """Read a comparison YAML; row values may be a mapping of dotted keys or a list of key=value."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"comparison config {path} is a directory; --config takes a YAML file "
                                f"(configs/compare_synthfer.yaml)")
    if not path.is_file():
        raise FileNotFoundError(f"comparison config {path} not found")
    spec = read_yaml_file(path, "comparison config") or {}
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: expected a mapping with base, rows (and optional overrides, out, reference)")
    missing = {"base", "rows"} - set(spec)
    if missing:
        raise ValueError(f"{path}: missing keys {sorted(missing)}; expected base, rows (and optional overrides, out)")
    if not isinstance(spec["rows"], dict) or not spec["rows"]:
        raise ValueError(f"{path}: rows must be a mapping of row names to their overrides")
    rows = {}
    for name, row in spec["rows"].items():
        # A row trains into OUT/ROW/seedS: its name must not lead out of OUT ("../../x", "/tmp/x").
        name = plain_name(str(name), f"{path}: row")
        if isinstance(row, dict):
            rows[name] = [f"{key}={_yaml_scalar(value)}" for key, value in row.items()]
        elif isinstance(row, list):
            rows[name] = [str(item) for item in row]
        else:
            raise ValueError(f"{path}: row '{name}' must be a mapping of dotted keys or a list of key=value")
    reference = spec.get("reference")
    if reference is not None and reference not in rows:
        raise ValueError(f"{path}: reference row '{reference}' is not among the rows {list(rows)}")
    base = spec["base"]
    if isinstance(base, dict):
        unknown = set(base) - {"data", "method", "recipe"}
        if unknown or "data" not in base:
            raise ValueError(f"{path}: base must be a recipe file or a mapping with data (and method, recipe), "
                             f"got keys {sorted(base)}")
        base = {"data": str(base["data"]), "method": str(base.get("method", "baseline")),
                **({"recipe": str(base["recipe"])} if base.get("recipe") is not None else {})}
    elif not isinstance(base, str):
        raise ValueError(f"{path}: base must be a recipe file or a mapping with data and method, got {base!r}")
    return ComparePlan(base=base, out=spec.get("out", f"runs/{path.stem}"), rows=rows,
                       overrides=[str(o) for o in spec.get("overrides", [])], reference=reference,
                       published=_published_block(path, spec.get("published")),
                       selection=_selection_block(path, spec.get("selection"), rows))


def _selection_block(path: Path, block: Any, rows: Mapping[str, list[str]]) -> dict[str, Any] | None:
    """A confirmation plan's ``selection:`` block (written by ``hsbs choose``), checked."""
    if block is None:
        return None
    expected = "a mapping with plan, seeds (integers), metric, candidates (an integer) and chosen (a row)"
    if not isinstance(block, dict) or set(block) != {"plan", "seeds", "metric", "candidates", "chosen"}:
        raise ValueError(f"{path}: selection must be {expected}, got {block!r}")
    seeds, candidates = block["seeds"], block["candidates"]
    if (not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                             for s in seeds)
            or not isinstance(candidates, int) or isinstance(candidates, bool) or candidates < 1):
        raise ValueError(f"{path}: selection must be {expected}, got seeds {seeds!r}, candidates {candidates!r}")
    if block["chosen"] not in rows:
        raise ValueError(f"{path}: selection.chosen '{block['chosen']}' is not among the rows {list(rows)}")
    return {"plan": str(block["plan"]), "seeds": seeds, "metric": str(block["metric"]),
            "candidates": candidates, "chosen": str(block["chosen"])}


def _published_block(path: Path, block: Any) -> dict[str, list[str] | None] | None:
    """A plan's ``published:`` block as {datasets, methods}; ``published: rafdb`` is short for one dataset."""
    if block is None:
        return None
    if isinstance(block, (str, list)):
        block = {"datasets": block}
    if not isinstance(block, dict) or "datasets" not in block or set(block) - {"datasets", "methods"}:
        raise ValueError(f"{path}: published must be a mapping with datasets (and optional methods), "
                         f"e.g. published: {{datasets: [rafdb], methods: [clcl, mfer]}}; got {block!r}")
    as_list = lambda value: [str(value)] if isinstance(value, str) else [str(item) for item in value]   # noqa: E731
    methods = None if block.get("methods") is None else as_list(block["methods"])
    unknown = sorted(set(methods or ()) - set(PUBLISHED_METHODS))
    if unknown:
        raise ValueError(f"{path}: published.methods {unknown} unknown; choose from {list(PUBLISHED_METHODS)}")
    return {"datasets": as_list(block["datasets"]), "methods": methods}


def _yaml_scalar(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def load_plan_config(plan: ComparePlan, overrides: list[str]):
    """The plan's base recipe (a file, or a ``{data, method[, recipe]}`` composition as ``--data/--method/--recipe``)
    + overrides."""
    if isinstance(plan.base, dict):
        return load_config(None, overrides, data=plan.base["data"], method=plan.base["method"],
                           recipe=plan.base.get("recipe"))
    return load_config(plan.base, overrides)


def run_dir(plan: ComparePlan, row: str, seed: int) -> Path:
    return Path(plan.out) / row / f"seed{seed}"


def run_overrides(plan: ComparePlan, row: str, seed: int, extra_overrides: Sequence[str] = ()) -> list[str]:
    """Every override of run (row, seed): the plan's, the row's with ``{out}`` and ``{seed}`` filled in, the
    command line's, then the seed and the run folder."""
    row_overrides = [item.replace("{out}", str(plan.out)).replace("{seed}", str(seed)) for item in plan.rows[row]]
    return [*plan.overrides, *row_overrides, *extra_overrides, f"train.seed={seed}", f"out={run_dir(plan, row, seed)}"]


#: the first confirmation seed: far from the selection seeds the plans use (0-7)
FIRST_FRESH_SEED = 10


def fresh_seeds(selection_seeds: Sequence[int], count: int = 8) -> list[int]:
    """``count`` seeds from FIRST_FRESH_SEED up that the selection did not use."""
    seeds, seed = [], FIRST_FRESH_SEED
    while len(seeds) < count:
        if seed not in selection_seeds:
            seeds.append(seed)
        seed += 1
    return seeds


def selection_note(selection: Mapping) -> str:
    """The line a confirmation's comparison.md starts with: how its row was chosen."""
    seeds = " ".join(str(seed) for seed in selection["seeds"])
    return (f"Confirmation on fresh seeds: '{selection['chosen']}' was chosen among {selection['candidates']} "
            f"candidate rows by the {selection['metric']} over seeds {seeds} ({selection['plan']}). None of "
            f"those seeds is used here, so the difference below is one comparison, not {selection['candidates']}.")


def check_fresh(selection: Mapping | None, seeds: Sequence[int], plan_file: str) -> None:
    """Refuse to confirm a choice on any seed that made it."""
    if not selection:
        return
    reused = sorted(set(seeds) & set(selection["seeds"]))
    if reused:
        raise ValueError(f"{plan_file}: seeds {reused} chose its row (selection.seeds "
                         f"{list(selection['seeds'])}); confirm on fresh seeds, e.g. --seeds "
                         f"{' '.join(map(str, fresh_seeds(selection['seeds'])))}")


# ---------------------------------------------------------------------------------------------- statistics

def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = list(values)
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


@dataclass
class PairedDifference:
    """row - reference over the seeds both have: mean, 95% CI and the paired t-test's p-value."""

    mean: float
    low: float
    high: float
    p_value: float
    n: int

    @property
    def verdict(self) -> str:
        """"no difference" when the interval contains 0 (or cannot be computed), else higher / lower."""
        if self.n < 2 or math.isnan(self.low) or self.low <= 0 <= self.high:
            return "no difference"
        return "higher" if self.mean > 0 else "lower"


def paired_difference(values: Sequence[float], reference: Sequence[float], *, confidence: float = 0.95
                      ) -> PairedDifference:
    """Paired difference of two equally long per-seed lists: mean, Student-t interval, paired t-test."""
    if len(values) != len(reference):
        raise ValueError(f"paired values need the same seeds, got {len(values)} and {len(reference)}")
    differences = [a - b for a, b in zip(values, reference)]
    n = len(differences)
    mean, std = mean_std(differences)
    if n < 2:
        return PairedDifference(mean, math.nan, math.nan, math.nan, n)
    if std == 0:
        return PairedDifference(mean, mean, mean, 0.0 if mean != 0 else 1.0, n)
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)
    p_value = float(stats.ttest_rel(values, reference).pvalue)
    return PairedDifference(mean, mean - half, mean + half, p_value, n)


# ---------------------------------------------------------------------------------------------- running

class SittingStopped(Exception):
    """A run of the comparison stopped before its report, as asked (``train.stop_after_epoch``)."""


def run_comparison(plan: ComparePlan, seeds: list[int], *, extra_overrides: Sequence[str] = (),
                   measure_speed: bool = True, diagnostics: bool | None = None) -> list[dict]:
    """Train every (row, seed) not yet finished, then summarise. Returns one dict per row.

    ``diagnostics``: attention scores and BSA statistics per run (None: only when the data is SynthFER,
    whose masks say where the expression is).
    """
    results: dict[str, dict[int, dict]] = {}
    configs = {}
    for row in plan.rows:
        results[row] = {}
        for seed in seeds:
            out = run_dir(plan, row, seed)
            config = load_plan_config(plan, run_overrides(plan, row, seed, extra_overrides))
            eval_file = out / "eval.json"
            if finished_run_of(out, config):
                print(f"[compare] reusing {eval_file}")
            elif resumable_run_of(out, config):
                # a sitting that ended mid-run (a session's end, a kill): continue it, not hours from scratch
                print(f"[compare] resuming {row} seed {seed} from {out / 'last.pt'}")
                train.fit(config, resume=out)
            else:
                print(f"[compare] training {row} seed {seed} -> {out}")
                train.fit(config)
            if not eval_file.is_file():
                raise SittingStopped(f"{out} stopped before its last epoch (train.stop_after_epoch); run the same "
                                     f"command again to continue it and the rest of the comparison")
            results[row][seed] = json.loads(eval_file.read_text())
            configs[row] = config
    if diagnostics is None:
        diagnostics = all(config.data.name == "synthfer" for config in configs.values())
    if diagnostics:
        for row in plan.rows:
            for seed in seeds:
                # on the device the row trained on: on a GPU machine the CPU is shared by every run
                results[row][seed]["diagnostics"] = run_diagnostics(
                    run_dir(plan, row, seed), device=resolve_device(configs[row].train.device))
    summaries = summarise(results, reference=plan.reference_row())
    for summary in summaries:
        summary.update(_cost(configs[summary["row"]], measure_speed))
    return summaries


def summarise(results: dict[str, dict[int, dict]], *, reference: str) -> list[dict]:
    """Per row: mean/std of every metric, minority recalls and diagnostics; paired differences to ``reference``.

    ``results[row][seed]`` is that run's eval.json (optionally with a ``diagnostics`` entry).
    """
    if reference not in results:
        raise KeyError(f"reference row '{reference}' has no results; rows: {list(results)}")
    summaries = []
    for row, by_seed in results.items():
        seeds = sorted(by_seed)
        summary: dict[str, Any] = {"row": row, "seeds": len(seeds), "seed_list": " ".join(map(str, seeds)),
                                   "scored": scored_split(by_seed.values())}
        series = _series(by_seed)
        for key, values in series.items():
            if len(values) == len(seeds):           # present in every seed (a class may be absent)
                summary[f"{key}_mean"], summary[f"{key}_std"] = mean_std(values)
        for name in MINORITY_CLASSES:               # every run's own value, in the order of seed_list
            values = series.get(f"recall_{name}", [])
            if len(values) == len(seeds):
                summary[f"recall_{name}_per_seed"] = " ".join(f"{value:.4f}" for value in values)
        if row != reference:
            shared = sorted(set(seeds) & set(results[reference]))
            reference_series = _series({s: results[reference][s] for s in shared})
            own = _series({s: by_seed[s] for s in shared})
            attention = [key for key in own if key.startswith("layer")]
            for key in (*METRICS, *VAL_METRICS, *(f"recall_{name}" for name in MINORITY_CLASSES), *attention):
                if len(own.get(key, [])) == len(shared) == len(reference_series.get(key, [])) and shared:
                    difference = paired_difference(own[key], reference_series[key])
                    summary.update({f"{key}_diff": difference.mean, f"{key}_diff_low": difference.low,
                                    f"{key}_diff_high": difference.high, f"{key}_p": difference.p_value,
                                    f"{key}_verdict": difference.verdict, "paired_seeds": difference.n})
        summaries.append(summary)
    return summaries


def scored_split(reports) -> str:
    """What the runs' eval.json files scored, in words: "test split", or the validation split with the reason
    (a FER2013 copy without PrivateTest), plus the test-time augmentation when there was one."""
    labels = set()
    for report in reports:
        split = str(report.get("split", "test"))
        label = f"{split} split" + (" (validation numbers: no test split in the copy)" if report.get("note") else "")
        tta = report.get("tta", "none")
        labels.add(label + (f", test-time augmentation {tta}" if tta != "none" else ""))
    return "; ".join(sorted(labels))


def _series(by_seed: dict[int, dict]) -> dict[str, list[float]]:
    """Per-seed values of every tabulated quantity, keyed like the summary columns."""
    series: dict[str, list[float]] = {}

    def add(key: str, value) -> None:
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            series.setdefault(key, []).append(float(value))

    for seed in sorted(by_seed):
        report = by_seed[seed]
        for metric in METRICS:
            add(metric, report[metric])
            add(f"val_{metric}", (report.get("validation") or {}).get(metric))
        for name in MINORITY_CLASSES:
            add(f"recall_{name}", report.get("per_class_recall", {}).get(name))
        diagnostics = report.get("diagnostics") or {}
        attention = diagnostics.get("attention", {})
        for layer, scores in attention.items():
            for score in (*ATTENTION_SCORES, *EQUAL_RESOLUTION_SCORES):
                add(f"{layer}_{score}", scores.get(score))
            # the centre baseline on the layer's grid: a property of the masks, named so it is never differenced
            add(f"centre_pointing_1cell_{layer}", scores.get("centre_pointing_1cell"))
        # a property of the masks, the same for every layer and run: one value per run, never differenced
        add("centre_pointing", next((scores.get("centre_pointing") for scores in attention.values()), None))
        for statistic in BSA_STATISTICS:
            add(f"bsa_{statistic}", diagnostics.get("bsa", {}).get(statistic))
    return series


def _cost(config, measure_speed: bool) -> dict:
    model = build_model(config, class_names(config.data.num_classes), load_pretrained=False)
    size = config.data.input_size
    cost = {"params_m": count_parameters(model) / 1e6, "gmacs": count_macs(model, size) / 1e9}
    if measure_speed:
        cost["train_img_s"] = measure_training(model, input_size=size, batch_size=config.train.batch_size, steps=3)
        cost["infer_img_s"] = measure_inference(model, input_size=size, batch_size=config.train.eval_batch_size,
                                                steps=3)
    return cost


# ---------------------------------------------------------------------------------------------- tables

def _percent(summary: dict, key: str) -> str:
    """``83.5 ± 0.6`` in percent; one seed has no spread, so only its value."""
    if summary.get("seeds") == 1:
        return f"{100 * summary[f'{key}_mean']:.1f}"
    return f"{100 * summary[f'{key}_mean']:.1f} ± {100 * summary[f'{key}_std']:.1f}"


def format_markdown(summaries: list[dict]) -> str:
    """Percentages as mean ± std over seeds; minority recall columns when every row has them."""
    speed = "train_img_s" in summaries[0]
    minority = [name for name in MINORITY_CLASSES if all(f"recall_{name}_mean" in s for s in summaries)]
    header = ("| row | seeds | accuracy | mean class acc. | macro-F1 |"
              + "".join(f" {name} recall |" for name in minority) + " params (M) | GMACs |")
    rule = "|---|---|---|---|---|" + "---|" * len(minority) + "---|---|"
    if speed:
        header += " train img/s | infer img/s |"
        rule += "---|---|"
    lines = [header, rule]
    for s in summaries:
        cells = [s["row"], str(s["seeds"])]
        keys = [*METRICS, *(f"recall_{name}" for name in minority)]
        cells += [_percent(s, key) for key in keys]
        cells += [f"{s['params_m']:.2f}", f"{s['gmacs']:.3f}"]
        if speed:
            cells += [f"{s['train_img_s']:.0f}", f"{s['infer_img_s']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_differences(summaries: list[dict], reference: str) -> str:
    """Each row minus the reference, paired by seed: mean [95% CI] in points, p, and the verdict."""
    rows = [s for s in summaries if any(key.endswith("_diff") for key in s)]
    if not rows:
        return ""
    keys = [key for key in (*METRICS, *(f"recall_{name}" for name in MINORITY_CLASSES))
            if all(f"{key}_diff" in s for s in rows)]
    names = {**METRIC_NAMES, **{f"recall_{name}": f"{name} recall" for name in MINORITY_CLASSES}}
    lines = [f"Difference to {reference}, paired by seed, in points: mean [95% CI] (paired t-test p); an "
             "interval containing 0 is no difference.", "",
             "| row | paired seeds | " + " | ".join(names[key] for key in keys) + " |",
             "|---|---|" + "---|" * len(keys)]
    for s in rows:
        cells = [s["row"], str(s.get("paired_seeds", ""))]
        for key in keys:
            if s[f"{key}_verdict"] == "no difference" and math.isnan(s[f"{key}_diff_low"]):
                cells.append(f"{100 * s[f'{key}_diff']:+.1f} (one seed: no interval)")
                continue
            cells.append(f"{100 * s[f'{key}_diff']:+.1f} [{100 * s[f'{key}_diff_low']:+.1f}, "
                         f"{100 * s[f'{key}_diff_high']:+.1f}] (p={s[f'{key}_p']:.2f}): {s[f'{key}_verdict']}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_minority_runs(summaries: list[dict]) -> str:
    """The minority classes' recall of every run (row x seed), in percent: the spread a mean hides."""
    names = [name for name in MINORITY_CLASSES if any(f"recall_{name}_per_seed" in s for s in summaries)]
    if not names:
        return ""
    lines = ["Minority-class recall of every run (test split, percent), one value per seed in the order listed:", "",
             "| row | seeds | " + " | ".join(f"{name} recall per run" for name in names) + " |",
             "|---|---|" + "---|" * len(names)]
    for s in summaries:
        cells = [s["row"], s["seed_list"]]
        for name in names:
            values = s.get(f"recall_{name}_per_seed")
            cells.append(" / ".join(f"{100 * float(v):.1f}" for v in values.split()) if values else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_validation(summaries: list[dict], reference: str) -> str:
    """The validation split's scores (where every choice is made), mean ± std and the paired difference."""
    keys = [key for key in VAL_METRICS if all(f"{key}_mean" in s for s in summaries)]
    if not keys:
        return ""
    names = {f"val_{metric}": name for metric, name in METRIC_NAMES.items()}
    lines = [f"Validation split (the checkpoint's selection split; choices are made here, not on the test "
             f"split): mean ± std, and the difference to {reference} paired by seed [95% CI].", "",
             "| row | seeds | " + " | ".join(names[key] for key in keys) + " |", "|---|---|" + "---|" * len(keys)]
    for s in summaries:
        cells = [s["row"], str(s["seeds"])]
        for key in keys:
            cell = _percent(s, key)
            if f"{key}_diff" in s:
                low, high = s[f"{key}_diff_low"], s[f"{key}_diff_high"]
                cell += (f"; {100 * s[f'{key}_diff']:+.1f}" if math.isnan(low) else
                         f"; {100 * s[f'{key}_diff']:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]")
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _interval(summary: dict, key: str) -> str:
    """``+0.044 [+0.021, +0.067]`` for a paired difference in the score's own units ("-" when absent)."""
    if f"{key}_diff" not in summary:
        return "-"
    low, high = summary[f"{key}_diff_low"], summary[f"{key}_diff_high"]
    if math.isnan(low):
        return f"{summary[f'{key}_diff']:+.3f}"
    return f"{summary[f'{key}_diff']:+.3f} [{low:+.3f}, {high:+.3f}]"


def _mean_std_cell(summary: dict, key: str) -> str:
    """``0.412 ± 0.031`` over seeds (one seed: only its value; "-" when absent)."""
    if f"{key}_mean" not in summary:
        return "-"
    return f"{summary[f'{key}_mean']:.3f}" + ("" if summary.get("seeds") == 1 else f" ± {summary[f'{key}_std']:.3f}")


def _attention_table(intro: str, rows: list[dict], layers: list[str], cell, scores: Sequence[str] = ATTENTION_SCORES,
                     label: str = "energy / pointing / ring") -> list[str]:
    """One line per row, one cell per layer: ``cell(summary, "<layer>_<score>")`` of its scores joined by slashes."""
    header = "| row | " + " | ".join(f"{layer} {label}" for layer in layers) + " |"
    return [intro, "", header, "|---|" + "---|" * len(layers),
            *("| " + " | ".join([s["row"], *(" / ".join(cell(s, f"{layer}_{score}") for score in scores)
                                              for layer in layers)]) + " |" for s in rows)]


def format_diagnostics_table(summaries: list[dict], reference: str = "reference") -> str:
    """Attention scores per layer and BSA statistics, mean ± std over seeds (rows that have them); then the
    equal-resolution scores (:data:`EQUAL_RESOLUTION_TABLES`) when the runs' diagnostics have them."""
    layers = sorted({key.split("_", 1)[0] for s in summaries for key in s
                     if key.startswith("layer") and key.endswith("_energy_share_mean")})
    lines = []
    if layers:
        centre = next((s["centre_pointing_mean"] for s in summaries if "centre_pointing_mean" in s), None)
        centre_note = (f"; a map that always peaks at the image centre wins the pointing game on {centre:.3f}"
                       if centre is not None else "")
        lines += _attention_table("Attention of each stage on the expression regions (test images; chance: energy "
                                  "share and pointing = the regions' area, outer ring = a uniform map's ring share"
                                  f"{centre_note}):", summaries, layers, _mean_std_cell)
        compared = [s for s in summaries if any(f"{layer}_energy_share_diff" in s for layer in layers)]
        if compared:
            lines += [""] + _attention_table(f"Attention scores minus the {reference} row's, paired by seed: mean "
                                             "[95% CI]; an interval containing 0 is no difference:", compared, layers,
                                             _interval)
        lines += _equal_resolution_tables(summaries, reference, layers)
    bsa_rows = [s for s in summaries if "bsa_row_entropy_mean" in s]
    if bsa_rows:
        lines += ["", "BSA similarity of test batches (row entropy in nats; column mass: the largest share of "
                  "all attention one sample receives; same/different: mean S of same-class pairs over "
                  "different-class pairs):", "",
                  "| row | row entropy | largest column mass | same/different class |", "|---|---|---|---|"]
        for s in bsa_rows:
            lines.append("| " + " | ".join([s["row"]] + [f"{s[f'bsa_{k}_mean']:.3f} ± {s[f'bsa_{k}_std']:.3f}"
                                                        for k in BSA_STATISTICS]) + " |")
    return "\n".join(lines)


def _equal_resolution_tables(summaries: list[dict], reference: str, layers: list[str]) -> list[str]:
    """The tables of :data:`EQUAL_RESOLUTION_TABLES` (rows whose diagnostics have them), each followed by its
    paired differences to ``reference``: the stages compared at one resolution, not each at its own."""
    rows = [s for s in summaries if any(f"{layer}_pointing_hit_rate_1cell_mean" in s for layer in layers)]
    if not rows:
        return []
    centres = {layer: next((s[f"centre_pointing_1cell_{layer}_mean"] for s in rows
                            if f"centre_pointing_1cell_{layer}_mean" in s), None) for layer in layers}
    centre_note = ", ".join(f"{layer} {value:.3f}" for layer, value in centres.items() if value is not None)
    lines = ["", "Attention at one resolution (test images). One-cell pointing: a hit when the peak cell is within one "
             "cell of the regions, on the map's own grid" + (f"; a map peaked at its middle cell scores {centre_note}"
                                                             if centre_note else "") + "."]
    for title, scores in EQUAL_RESOLUTION_TABLES.items():
        label = "1-cell" if len(scores) == 1 else "energy / pointing / 1-cell"
        lines += [""] + _attention_table(f"{title}:", rows, layers, _mean_std_cell, scores, label)
        compared = [s for s in rows if any(f"{layer}_{score}_diff" in s for layer in layers for score in scores)]
        if compared:
            lines += [""] + _attention_table(f"The same minus the {reference} row's, paired by seed: mean [95% CI]:",
                                             compared, layers, _interval, scores, label)
    return lines


def format_report(summaries: list[dict], reference: str, published: dict | None = None,
                  selection: Mapping | None = None) -> str:
    """Every table; ``published`` (a plan's block) adds the papers' quoted numbers after the measured rows,
    ``selection`` (a confirmation plan's block) says first how its row was chosen."""
    quoted = format_published(published["datasets"], published.get("methods")) if published else ""
    # Said only when it is not the plain test split: a copy without one (validation numbers) or TTA.
    scored = sorted({s["scored"] for s in summaries if s.get("scored")})
    heading = f"Scored on: {'; '.join(scored)}." if scored and scored != ["test split"] else ""
    parts = [selection_note(selection) if selection else "", heading, format_markdown(summaries), quoted,
             format_differences(summaries, reference),
             format_minority_runs(summaries), format_validation(summaries, reference),
             format_diagnostics_table(summaries, reference)]
    return "\n\n".join(part for part in parts if part)


TABLE_FILES = ("comparison.md", "comparison.csv")


def table_outputs(out: str | Path, *, force: bool = False, plan: str | Path | None = None) -> OutputFolder:
    """The comparison's folder under the output rule (:mod:`hsbs_lib.outputs`), its tables checked: a
    comparison.md or .csv that hsbs compare did not write is replaced only with ``force``, and the plan
    file it reads never."""
    outputs = OutputFolder(out, "compare", force=force, reads=[plan] if plan is not None else [])
    outputs.check(TABLE_FILES)
    return outputs


def last_epochs_table(runs_by_row: Mapping[str, Sequence[Mapping[str, list] | str | os.PathLike]],
                      column: str = "train/accuracy", fractions: Sequence[float] = (0.5, 0.75, 1.0)) -> str:
    """A Markdown table of ``column``'s mean over seeds at fractions of the schedule (its half, three
    quarters and end by default), and the gain over the last quarter: how far each row still was from
    levelling off. Values in percent."""
    runs = {row: [metrics_of(value) for value in values] for row, values in runs_by_row.items()}
    header = " | ".join(f"epoch {int(round(f * 100))} %" for f in fractions)
    lines = [f"| row | seeds | {column}: {header} | last quarter's gain |", "|---|---|" + "---|" * (len(fractions) + 1)]
    for row, seeds in runs.items():
        values = []
        for metrics in seeds:
            y = np.asarray(numeric_column(metrics.get(column, [])), dtype=np.float64)
            y = y[~np.isnan(y)]
            if len(y):
                def at(fraction: float) -> float:       # the epoch that ends this share of the schedule
                    return y[max(0, math.ceil(fraction * len(y)) - 1)]
                values.append([at(f) for f in fractions] + [y[-1] - at(0.75)])
        if not values:
            continue
        means = np.mean(values, axis=0) * 100
        cells = " | ".join(f"{v:.1f}" for v in means[:-1])
        lines.append(f"| {row} | {len(values)} | {cells} | {means[-1]:+.1f} |")
    return "\n".join(lines)


def write_tables(summaries: list[dict], out: str | Path, reference: str, published: dict | None = None, *,
                 force: bool = False, plan: str | Path | None = None, selection: Mapping | None = None,
                 metrics_by_row: dict[str, list[Path]] | None = None) -> tuple[Path, Path]:
    """comparison.md (every table) and comparison.csv (the measured rows only), written atomically; with
    ``metrics_by_row`` (row -> its seeds' metrics.csv) also a table of how much training accuracy still rose
    over the schedule's last quarter (comparison.md's last table; ``hsbs_lib.viz.plot_curves_by_row`` draws
    the curves)."""
    outputs = table_outputs(out, force=force, plan=plan)
    text = format_report(summaries, reference, published, selection)
    finished = {row: [path for path in paths if Path(path).is_file()] for row, paths in (metrics_by_row or {}).items()}
    metrics_by_row = {row: paths for row, paths in finished.items() if paths}
    if metrics_by_row:
        text += ("\n\nTraining accuracy over the schedule, mean over seeds in percent: a row still rising over "
                 "the last quarter is undertrained at this budget:\n\n" + last_epochs_table(metrics_by_row))
    md = outputs.write_text(TABLE_FILES[0], text + "\n")
    fields = list(dict.fromkeys(key for summary in summaries for key in summary))

    def write_csv(path: Path) -> None:
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(summaries)
    return md, outputs.write(TABLE_FILES[1], write_csv)


# ---------------------------------------------------------------------------------------------- CLI

def add_compare_arguments(parser) -> None:
    parser.add_argument("--config", required=True, help="comparison YAML (configs/compare_synthfer.yaml)")
    # Strings, so that "--seeds 0 1 2 train.epochs=6" works: key=value items after the seeds are overrides.
    parser.add_argument("--seeds", nargs="+", default=["0", "1", "2"], help="seeds (default 0 1 2)")
    parser.add_argument("--out", help="override the comparison's output folder")
    parser.add_argument("--force", action="store_true",
                        help="replace comparison.md / .csv in the output folder that hsbs compare did not write")
    parser.add_argument("--rows", nargs="+", help="only these rows (the reference row is always kept)")
    parser.add_argument("--reference", help="the row the others are compared with (default: the plan's reference)")
    parser.add_argument("--no-speed", dest="speed", action="store_false", help="skip the images/s measurement")
    parser.add_argument("--diagnostics", dest="diagnostics", action="store_true", default=None,
                        help="attention scores and BSA statistics per run (default: on for SynthFER)")
    parser.add_argument("--no-diagnostics", dest="diagnostics", action="store_false")
    parser.add_argument("overrides", nargs="*", help="key=value overrides applied to every run")


def split_seeds(items: list[str]) -> tuple[list[int], list[str]]:
    """``--seeds`` items -> (integer seeds, key=value overrides that followed them)."""
    seeds, overrides = [], []
    for item in items:
        if "=" in item:
            overrides.append(item)
        else:
            try:
                seeds.append(int(item))
            except ValueError:
                raise ValueError(f"--seeds expects integers, got '{item}'") from None
    if not seeds:
        raise ValueError("--seeds needs at least one integer seed")
    return seeds, overrides


def use_reference(plan: ComparePlan, row: str | None) -> str:
    """Make ``row`` (a ``--reference``; None: the plan's own) the row the others are compared with; returns it."""
    if row:
        if row not in plan.rows:
            raise KeyError(f"unknown reference row '{row}'; the config has {list(plan.rows)}")
        plan.reference = row
    return plan.reference_row()


def run_compare(args) -> int:
    seeds, trailing = split_seeds([str(item) for item in args.seeds])
    plan = load_plan(args.config)
    if args.out:
        plan.out = args.out
    reference = use_reference(plan, args.reference)
    if args.rows:
        unknown = set(args.rows) - set(plan.rows)
        if unknown:
            raise KeyError(f"unknown rows {sorted(unknown)}; the config has {list(plan.rows)}")
        plan.rows = {name: plan.rows[name] for name in plan.rows if name in args.rows or name == reference}
    check_fresh(plan.selection, seeds, args.config)
    table_outputs(plan.out, force=args.force, plan=args.config)    # refused before hours of training, not after
    try:
        summaries = run_comparison(plan, seeds, extra_overrides=[*args.overrides, *trailing],
                                   measure_speed=args.speed, diagnostics=args.diagnostics)
    except SittingStopped as stopped:
        print(f"[compare] {stopped}")
        return 0
    metrics_by_row = {row: [run_dir(plan, row, seed) / "metrics.csv" for seed in seeds] for row in plan.rows}
    md, csv_path = write_tables(summaries, plan.out, reference, plan.published, force=args.force,
                                plan=args.config, selection=plan.selection, metrics_by_row=metrics_by_row)
    print(format_report(summaries, reference, plan.published, plan.selection))
    print(f"\nwritten {md} and {csv_path}")
    return 0
