"""``hsbs compare``: one recipe, several methods or ablation rows, several seeds, one table.

A comparison config names a base recipe, overrides applied to every row, and the rows themselves:

    base: configs/synthfer_baseline.yaml
    overrides: [train.epochs=8]
    out: runs/compare_synthfer
    rows:
      baseline: {model.name: baseline}
      hsbs:     {model.name: hsbs}

Each (row, seed) trains into OUT/ROW/seedS; a finished run (eval.json present, same recipe in its
config.yaml) is reused, so the command can be interrupted and re-run. The table reports mean and standard deviation over seeds.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hsbs_lib.config import load_config, same_recipe

METRICS = ("accuracy", "mean_class_accuracy", "macro_f1")
#: per-class recall reported beside the overall metrics: the rare classes of the RAF-DB-like imbalance
MINORITY_CLASSES = ("fear", "disgust")


@dataclass
class ComparePlan:
    base: str
    out: str
    rows: dict[str, list[str]]
    overrides: list[str] = field(default_factory=list)


def load_plan(path: str | Path) -> ComparePlan:
    """Read a comparison YAML; row values may be a mapping of dotted keys or a list of key=value."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"comparison config {path} not found")
    spec = yaml.safe_load(path.read_text()) or {}
    missing = {"base", "rows"} - set(spec)
    if missing:
        raise ValueError(f"{path}: missing keys {sorted(missing)}; expected base, rows (and optional overrides, out)")
    rows = {}
    for name, row in spec["rows"].items():
        if isinstance(row, dict):
            rows[name] = [f"{key}={_yaml_scalar(value)}" for key, value in row.items()]
        elif isinstance(row, list):
            rows[name] = [str(item) for item in row]
        else:
            raise ValueError(f"{path}: row '{name}' must be a mapping of dotted keys or a list of key=value")
    return ComparePlan(base=spec["base"], out=spec.get("out", f"runs/{path.stem}"), rows=rows,
                       overrides=[str(o) for o in spec.get("overrides", [])])


def _yaml_scalar(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def run_dir(plan: ComparePlan, row: str, seed: int) -> Path:
    return Path(plan.out) / row / f"seed{seed}"


def run_comparison(plan: ComparePlan, seeds: list[int], *, extra_overrides: list[str] = (),
                   measure_speed: bool = True) -> list[dict]:
    """Train every (row, seed) not yet finished, then summarise. Returns one dict per row."""
    from hsbs_lib.engine.train import fit

    summaries = []
    for row, row_overrides in plan.rows.items():
        results = []
        config = None
        for seed in seeds:
            out = run_dir(plan, row, seed)
            overrides = [*plan.overrides, *row_overrides, *extra_overrides, f"train.seed={seed}", f"out={out}"]
            config = load_config(plan.base, overrides)
            eval_file = out / "eval.json"
            if eval_file.is_file() and _trained_with(out, config):
                print(f"[compare] reusing {eval_file}")
            else:
                print(f"[compare] training {row} seed {seed} -> {out}")
                fit(config)
            results.append(json.loads(eval_file.read_text()))
        summary = {"row": row, "seeds": len(results)}
        for metric in METRICS:
            summary[f"{metric}_mean"], summary[f"{metric}_std"] = _mean_std([float(r[metric]) for r in results])
        for name in MINORITY_CLASSES:
            recalls = [r.get("per_class_recall", {}).get(name) for r in results]
            if all(value is not None for value in recalls):  # absent in datasets without that class
                summary[f"recall_{name}_mean"], summary[f"recall_{name}_std"] = _mean_std(recalls)
        summary.update(_cost(config, measure_speed))
        summaries.append(summary)
    return summaries


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single seed)."""
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def _trained_with(run: Path, config) -> bool:
    """A finished run is reused only when its saved config is the recipe asked for now."""
    saved = run / "config.yaml"
    return saved.is_file() and same_recipe(yaml.safe_load(saved.read_text()) or {}, config)


def _cost(config, measure_speed: bool) -> dict:
    from hsbs_lib.bench import count_macs, count_parameters, measure_inference, measure_training
    from hsbs_lib.data.labels import class_names
    from hsbs_lib.engine.train import build_model

    model = build_model(config, class_names(config.data.num_classes), load_pretrained=False)
    size = config.data.input_size
    cost = {"params_m": count_parameters(model) / 1e6, "gmacs": count_macs(model, size) / 1e9}
    if measure_speed:
        cost["train_img_s"] = measure_training(model, input_size=size, batch_size=config.train.batch_size, steps=3)
        cost["infer_img_s"] = measure_inference(model, input_size=size, batch_size=config.train.eval_batch_size,
                                                steps=3)
    return cost


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
        cells += [f"{100 * s[f'{key}_mean']:.1f} ± {100 * s[f'{key}_std']:.1f}" for key in keys]
        cells += [f"{s['params_m']:.2f}", f"{s['gmacs']:.3f}"]
        if speed:
            cells += [f"{s['train_img_s']:.0f}", f"{s['infer_img_s']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_tables(summaries: list[dict], out: str | Path) -> tuple[Path, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md, csv_path = out / "comparison.md", out / "comparison.csv"
    md.write_text(format_markdown(summaries) + "\n")
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(summaries[0]))
        writer.writeheader()
        writer.writerows(summaries)
    return md, csv_path


def add_compare_arguments(parser) -> None:
    parser.add_argument("--config", required=True, help="comparison YAML (configs/compare_synthfer.yaml)")
    # Strings, so that "--seeds 0 1 2 train.epochs=6" works: key=value items after the seeds are overrides.
    parser.add_argument("--seeds", nargs="+", default=["0", "1", "2"], help="seeds (default 0 1 2)")
    parser.add_argument("--out", help="override the comparison's output folder")
    parser.add_argument("--rows", nargs="+", help="only these rows")
    parser.add_argument("--no-speed", dest="speed", action="store_false", help="skip the images/s measurement")
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


def run_compare(args) -> int:
    seeds, trailing = split_seeds([str(item) for item in args.seeds])
    plan = load_plan(args.config)
    if args.out:
        plan.out = args.out
    if args.rows:
        unknown = set(args.rows) - set(plan.rows)
        if unknown:
            raise KeyError(f"unknown rows {sorted(unknown)}; the config has {list(plan.rows)}")
        plan.rows = {name: plan.rows[name] for name in args.rows}
    summaries = run_comparison(plan, seeds, extra_overrides=[*args.overrides, *trailing], measure_speed=args.speed)
    md, csv_path = write_tables(summaries, plan.out)
    print(format_markdown(summaries))
    print(f"\nwritten {md} and {csv_path}")
    return 0
