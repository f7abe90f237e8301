"""Plain-text tables for the terminal and markdown for reports/."""
from __future__ import annotations

from typing import Any, Sequence


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        # a learning rate like 4e-05 would print as 0.0000
        return f"{value:.3g}" if 0 < abs(value) < 1e-3 else f"{value:.4f}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def metrics_rows(results: dict[str, Any]) -> list[tuple[str, Any]]:
    if results["task"] == "multilabel":
        keys = [("test mAP", "mAP"), ("label-frequency baseline mAP", "baseline_mAP"), ("val mAP", "val_mAP"),
                ("C-F1", "c_f1"), ("O-F1", "o_f1"), ("mean Jaccard", "jaccard")]
    else:
        keys = [("test accuracy", "accuracy"), ("majority-class baseline", "baseline_accuracy"),
                ("val accuracy", "val_accuracy"), ("mean class accuracy", "mean_class_accuracy")]
    return [(label, results.get(key)) for label, key in keys]


def print_metrics_table(results: dict[str, Any]) -> None:
    rows = metrics_rows(results)
    print(f"\n{results.get('dataset', '')} {results['task']} on {results.get('split', 'test')} "
          f"({results['num_examples']} persons)")
    print(markdown_table(["metric", "value"], rows))
    per_class = results.get("per_class", {})
    if results["task"] == "multilabel" and per_class:
        ranked = sorted(per_class.items(), key=lambda kv: -(kv[1]["AP"] or 0.0))
        print("best classes:  " + ", ".join(f"{c} {v['AP']:.2f}" for c, v in ranked[:5] if v["AP"] is not None))
        print("worst classes: " + ", ".join(f"{c} {v['AP']:.2f}" for c, v in ranked[-5:] if v["AP"] is not None))
    if results.get("classes_without_positives"):
        print(f"no test positives (left out of the mean): {', '.join(results['classes_without_positives'])}")
