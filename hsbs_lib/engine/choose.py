"""Choose, then confirm: pick a comparison's best row on the validation split of some seeds, and write the
plan that tests it against the reference on fresh seeds.

Trying many variants and reporting the best one's difference on the same seeds overstates it: the best of
K noisy rows is above its true value by selection alone, and K comparisons at 95 % give about 0.05 K false
positives. The remedy is to separate the two steps::

    hsbs compare --config configs/variants_hsbs.yaml --seeds 0 1 2 3 4      # train every candidate
    hsbs choose  --config configs/variants_hsbs.yaml --seeds 0 1 2 3 4      # rank on validation, write the plan
    hsbs compare --config runs/variants_hsbs/choice/confirm.yaml --seeds 10 11 12 13 14 15 16 17

``hsbs choose`` trains nothing. It reads each finished run's ``eval.json`` (the validation split's scores of
the checkpoint that split selected), ranks the candidate rows (every row but the reference, unless
``--candidates`` names some) by the mean over seeds of one validation metric, and writes into its folder
(default ``PLAN_OUT/choice``):

* ``choice.md`` and ``choice.json``: the ranking with each row's paired difference to the reference on the
  selection seeds, the chosen row and the number of candidates compared;
* ``confirm.yaml``: a comparison plan with the reference row and the chosen row only, the plan's base and
  overrides, a new output folder, and a ``selection`` block (plan, seeds, metric, candidates, chosen row).

``hsbs compare`` refuses to run a plan with a ``selection`` block on any of its selection seeds, and its
comparison.md then says how the row was chosen: the confirmation is one comparison, made on seeds the choice
never saw. The test split is not read here at all.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping, Sequence

import yaml

from hsbs_lib.engine.compare import (METRIC_NAMES, METRICS, ComparePlan, fresh_seeds,
                                     load_plan, load_plan_config, mean_std, paired_difference, run_dir,
                                     run_overrides, split_seeds, use_reference)
from hsbs_lib.engine.run_folder import finished_run_of
from hsbs_lib.outputs import OutputFolder

CHOICE_FILES = ("choice.md", "choice.json", "confirm.yaml")


def selection_scores(plan: ComparePlan, rows: Sequence[str], seeds: Sequence[int], metric: str,
                     command: str) -> dict[str, list[float]]:
    """``{row: [validation metric of seed s for s in seeds]}`` from the finished runs' eval.json.

    Raises FileNotFoundError naming every run that is missing or holds another recipe, and ValueError for a
    run whose eval.json has no validation scores (a choice is made on the validation split only)."""
    missing, scores = [], {}
    for row in rows:
        scores[row] = []
        for seed in seeds:
            folder = run_dir(plan, row, seed)
            eval_file = folder / "eval.json"
            if not finished_run_of(folder, load_plan_config(plan, run_overrides(plan, row, seed))):
                missing.append(str(folder))
                continue
            try:
                report = json.loads(eval_file.read_text())
            except (OSError, ValueError) as error:
                raise ValueError(f"{eval_file}: unreadable ({error}); retrain the run with `{command}`") from None
            validation = report.get("validation") if isinstance(report, dict) else None
            if not isinstance(validation, dict) or not isinstance(validation.get(metric), (int, float)):
                raise ValueError(f"{eval_file}: no validation {metric}; hsbs choose selects on the validation "
                                 f"split only, and this run's recipe has none (data.val_split)")
            scores[row].append(float(validation[metric]))
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise FileNotFoundError(f"hsbs choose needs every candidate's finished run: {len(missing)} missing or of "
                                f"another recipe ({shown}); train them first with `{command}`")
    return scores


def rank_rows(scores: Mapping[str, Sequence[float]], reference: str) -> list[dict]:
    """Candidates (every row of ``scores`` but ``reference``) from best to worst mean score, each with its
    mean, std and paired difference to the reference (the same seeds, in the same order)."""
    ranked = []
    for row, values in scores.items():
        if row == reference:
            continue
        mean, std = mean_std(values)
        difference = paired_difference(values, scores[reference])
        # one seed has no interval: None, not NaN, so that choice.json stays valid JSON
        low, high = (None, None) if math.isnan(difference.low) else (difference.low, difference.high)
        ranked.append({"row": row, "mean": mean, "std": std, "diff": difference.mean, "diff_low": low,
                       "diff_high": high, "verdict": difference.verdict})
    # stable: a tie keeps the plan's order
    return sorted(ranked, key=lambda entry: -entry["mean"])


def confirm_plan(plan: ComparePlan, plan_file: str, chosen: str, seeds: Sequence[int], metric: str,
                 candidates: int, out: str) -> dict:
    """The plan that tests ``chosen`` against the reference on fresh seeds (``confirm.yaml``'s contents)."""
    reference = plan.reference_row()
    return {"base": plan.base, "out": out, "reference": reference, "overrides": list(plan.overrides),
            "rows": {reference: list(plan.rows[reference]), chosen: list(plan.rows[chosen])},
            "selection": {"plan": str(plan_file), "seeds": [int(seed) for seed in seeds],
                          "metric": f"validation {metric}", "candidates": int(candidates), "chosen": chosen}}


def format_choice(ranked: Sequence[dict], reference: str, seeds: Sequence[int], metric: str, plan_file: str,
                  confirm_file: str, confirm_seeds: Sequence[int], reference_mean: float) -> str:
    """choice.md: the ranking, the chosen row and how to confirm it."""
    name = METRIC_NAMES.get(metric, metric)
    lines = [f"Candidates ranked by the validation split's {name} (mean ± std over seeds "
             f"{' '.join(map(str, seeds))}, %), each with its difference to '{reference}' on the same seeds "
             f"[95 % CI]; the reference row scores {100 * reference_mean:.1f}:", "",
             f"| rank | row | validation {name} | vs {reference} (selection seeds) |", "|---|---|---|---|"]
    for rank, entry in enumerate(ranked, 1):
        interval = (f"{100 * entry['diff']:+.1f} [{100 * entry['diff_low']:+.1f}, {100 * entry['diff_high']:+.1f}]"
                    if entry["diff_low"] is not None else f"{100 * entry['diff']:+.1f} (one seed: no interval)")
        lines.append(f"| {rank} | {entry['row']} | {100 * entry['mean']:.1f} ± {100 * entry['std']:.1f} | "
                     f"{interval} |")
    chosen = ranked[0]
    lines += ["", f"**Chosen: '{chosen['row']}'**, the best of {len(ranked)} candidates ({plan_file}). Its "
              f"difference above was measured on the seeds that chose it, among {len(ranked)} comparisons, "
              f"so it is biased upward and is not a result. The result is the confirmation, one comparison on "
              f"seeds the choice never saw (the test split is read there, once per run):", "",
              f"    hsbs compare --config {confirm_file} --seeds {' '.join(map(str, confirm_seeds))}"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- CLI

def add_choose_arguments(parser) -> None:
    parser.add_argument("--config", required=True, help="the comparison YAML whose runs to choose from "
                                                         "(configs/variants_hsbs.yaml)")
    parser.add_argument("--seeds", nargs="+", default=["0", "1", "2", "3", "4"],
                        help="the selection seeds, each row's finished runs (default 0 1 2 3 4)")
    parser.add_argument("--metric", choices=METRICS, default="mean_class_accuracy",
                        help="the validation split's metric to rank by (default mean_class_accuracy)")
    parser.add_argument("--candidates", nargs="+", help="only these rows compete (default: every row but the "
                                                       "reference)")
    parser.add_argument("--reference", help="the row the chosen one must beat (default: the plan's reference)")
    parser.add_argument("--confirm-seeds", type=int, default=8,
                        help="how many fresh seeds the printed confirmation command names (default 8)")
    parser.add_argument("--out", help="where choice.md, choice.json and confirm.yaml go (default PLAN_OUT/choice)")
    parser.add_argument("--force", action="store_true", help="replace files there that hsbs choose did not write")


def run_choose(args) -> int:
    seeds, trailing = split_seeds([str(item) for item in args.seeds])
    if trailing:
        raise ValueError(f"hsbs choose reads finished runs and takes no overrides, got {' '.join(trailing)}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds: each seed once, got {' '.join(map(str, seeds))}")
    if args.confirm_seeds < 2:
        raise ValueError(f"--confirm-seeds: at least 2 (a paired interval needs two), got {args.confirm_seeds}")
    plan = load_plan(args.config)
    reference = use_reference(plan, args.reference)
    candidates = list(args.candidates) if args.candidates else [row for row in plan.rows if row != reference]
    unknown = [row for row in candidates if row not in plan.rows]
    if unknown:
        raise KeyError(f"unknown candidate rows {unknown}; the config has {list(plan.rows)}")
    candidates = [row for row in dict.fromkeys(candidates) if row != reference]
    if not candidates:
        raise ValueError(f"{args.config}: no candidate rows besides the reference '{reference}'")
    out = Path(args.out) if args.out else Path(plan.out) / "choice"
    outputs = OutputFolder(out, "choose", force=args.force, reads=[args.config])
    outputs.check(CHOICE_FILES)
    command = f"hsbs compare --config {args.config} --seeds {' '.join(map(str, seeds))}"
    scores = selection_scores(plan, [reference, *candidates], seeds, args.metric, command)
    ranked = rank_rows(scores, reference)
    chosen = ranked[0]["row"]
    confirm_file = str(out / "confirm.yaml")
    confirm_seeds = fresh_seeds(seeds, args.confirm_seeds)
    confirm = confirm_plan(plan, args.config, chosen, seeds, args.metric, len(candidates),
                           out=f"{plan.out.rstrip('/')}_confirm")
    text = format_choice(ranked, reference, seeds, args.metric, args.config, confirm_file, confirm_seeds,
                         mean_std(scores[reference])[0])
    header = (f"# written by hsbs choose from {args.config}, seeds {' '.join(map(str, seeds))}: the reference row "
              f"and the chosen one,\n# to be compared on fresh seeds only:\n#   hsbs compare --config "
              f"{confirm_file} --seeds {' '.join(map(str, confirm_seeds))}\n")
    outputs.write_text("choice.md", text + "\n")
    outputs.write_json("choice.json", {"plan": args.config, "reference": reference, "seeds": seeds,
                                       "metric": f"validation {args.metric}", "candidates": len(candidates),
                                       "chosen": chosen, "ranking": ranked, "confirm_seeds": confirm_seeds})
    outputs.write_text("confirm.yaml", header + yaml.safe_dump(confirm, sort_keys=False, allow_unicode=True))
    print(text)
    print(f"\nwritten {out / 'choice.md'}, {out / 'choice.json'} and {confirm_file}")
    return 0
