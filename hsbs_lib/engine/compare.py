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
            values = [float(r[metric]) for r in results]
            mean = sum(values) / len(values)
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
            summary[f"{metric}_mean"], summary[f"{metric}_std"] = mean, std
        summary.update(_cost(config, measure_speed))
        summaries.append(summary)
    return summaries


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
    speed = "train_img_s" in summaries[0]
    header = "| row | seeds | accuracy | mean class acc. | macro-F1 | params (M) | GMACs |"
    rule = "|---|---|---|---|---|---|---|"
    if speed:
        header += " train img/s | infer img/s |"
        rule += "---|---|"
    lines = [header, rule]
    for s in summaries:
        cells = [s["row"], str(s["seeds"])]
        cells += [f"{100 * s[f'{m}_mean']:.2f} ± {100 * s[f'{m}_std']:.2f}" for m in METRICS]
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
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", help="override the comparison's output folder")
    parser.add_argument("--rows", nargs="+", help="only these rows")
    parser.add_argument("--no-speed", dest="speed", action="store_false", help="skip the images/s measurement")
    parser.add_argument("overrides", nargs="*", help="key=value overrides applied to every run")


def run_compare(args) -> int:
    plan = load_plan(args.config)
    if args.out:
        plan.out = args.out
    if args.rows:
        unknown = set(args.rows) - set(plan.rows)
        if unknown:
            raise KeyError(f"unknown rows {sorted(unknown)}; the config has {list(plan.rows)}")
        plan.rows = {name: plan.rows[name] for name in args.rows}
    summaries = run_comparison(plan, args.seeds, extra_overrides=args.overrides, measure_speed=args.speed)
    md, csv_path = write_tables(summaries, plan.out)
    print(format_markdown(summaries))
    print(f"\nwritten {md} and {csv_path}")
    return 0
