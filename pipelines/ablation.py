"""The paper's Table 4 ablations on the same data, in one command.

    ctxemo ablate                       # full, no BOA, no BPA, no ELD, no geometry
    ctxemo ablate --variant full --variant no_eld

Each variant is params.yaml with one switch flipped, trained by the same training stage
(stages.train.run, Ray Train) and evaluated by the same evaluation (stages.evaluate.run)
into `artifacts/ablations/<variant>/`; the comparison goes to `reports/ablations.md` and
`reports/ablations.json`. The stage outputs the variants need (manifest, objects, label
graph) must exist: run `dvc repro evaluate` (or `make demo`) first.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterable

from pipelines.report import markdown_table
from stages.params import apply_overrides, params_from_dict, params_to_dict

VARIANTS: dict[str, dict[str, Any]] = {
    "full": {},
    "no_boa": {"model.boa.enabled": False},
    "no_bpa": {"model.bpa.enabled": False},
    "no_eld": {"model.eld.enabled": False},
    "no_geometry": {"model.boa.geometry": False},
}


def variant_params(base: dict[str, Any], variant: str):
    if variant not in VARIANTS:
        raise ValueError(f"unknown ablation {variant!r}; choose from {', '.join(VARIANTS)}")
    return params_from_dict(apply_overrides(base, VARIANTS[variant]))


def run_variant(base: dict[str, Any], variant: str, out_root: Path) -> dict[str, Any]:
    from stages import evaluate, train

    params = variant_params(base, variant)
    root = out_root / variant
    started = time.perf_counter()
    train_summary = train.run(params, train.TrainPaths(
        data_root=Path(params.data.root), model_dir=root / "model", report_dir=root / "train",
    ), run_name=f"ablation-{variant}", tags={"ctxemo.variant": variant})
    results = evaluate.run(evaluate.EvalPaths(
        data_root=Path(params.data.root), model_dir=root / "model", thresholds_file=root / "thresholds.json",
        metrics_file=root / "metrics.json", plots_dir=root / "plots",
    ), batch_size=params.train.batch_size)
    return {"variant": variant, "overrides": VARIANTS[variant], "train": train_summary, "test": results,
            "seconds": round(time.perf_counter() - started, 1)}


def comparison(rows: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """Markdown table + json rows: the primary metric and its gap to the full model."""
    task = rows[0]["test"]["task"]
    key, val_key = ("mAP", "val_mAP") if task == "multilabel" else ("accuracy", "val_accuracy")
    full = next((r["test"][key] for r in rows if r["variant"] == "full"), None)
    table = []
    for r in rows:
        test = r["test"]
        entry = {"variant": r["variant"], f"test_{key}": test[key], f"val_{key}": test[val_key],
                 "delta_vs_full": None if full is None else test[key] - full, "seconds": r["seconds"]}
        if task == "multilabel":
            entry.update({"c_f1": test["c_f1"], "o_f1": test["o_f1"], "baseline_mAP": test["baseline_mAP"]})
        table.append(entry)
    header = list(table[0])
    return markdown_table(header, [[e[h] for h in header] for e in table]), table


def run(base: dict[str, Any], variants: Iterable[str] = tuple(VARIANTS), out_root: Path = Path("artifacts/ablations"),
        report_dir: Path = Path("reports")) -> dict[str, Any]:
    variants = list(variants)
    for variant in variants:
        if variant not in VARIANTS:
            raise ValueError(f"unknown ablation {variant!r}; choose from {', '.join(VARIANTS)}")
    rows = [run_variant(base, v, out_root) for v in variants]
    markdown, table = comparison(rows)
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "ablations.md").write_text(
        "# Ablations (paper Table 4) on the configured data\n\n" + markdown + "\n")
    (report_dir / "ablations.json").write_text(json.dumps(
        {"rows": table, "params": params_to_dict(params_from_dict(base))}, indent=2))
    return {"markdown": markdown, "rows": table}
