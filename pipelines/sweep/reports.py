"""What a finished sweep leaves behind: one row per trial, the winner, plots and reports.

`reports/best_params.yaml` (the winner, in params.yaml's shape, searched paths only),
`reports/sweep.md` + `reports/sweep.json` (one row per trial) and `sweep_<path>.png` per searched
path (best metric against the searched value). Each searched value is shown next to the
paper's setting, read from configs/paper-emotic.yaml: that file is the only home of the
paper's values.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from core.errors import UserError
from core.params import Params
from pipelines.sweep.callbacks import first_line
from pipelines.sweep.space import field_at, model_space, native, nested
from pipelines.sweep.trial import METRIC, MODE

PAPER_CONFIG_NAME = Path("configs") / "paper-emotic.yaml"
# The workspace's copy first (a sweep runs in the workspace, also where ctxemo is installed from a
# wheel, as in the container image), then the one beside this source tree.
PAPER_CONFIGS = (PAPER_CONFIG_NAME, Path(__file__).resolve().parents[2] / PAPER_CONFIG_NAME)
# The paper config leaves model.rrla.boa.max_objects null: every stored object is read, so N is objects.top_n.
NULL_MEANS = {"model.rrla.boa.max_objects": "objects.top_n"}


def paper_values(space_paths: Iterable[str], config: Path | None = None) -> dict[str, Any]:
    """The paper's setting of each searched path that the paper config (a params override file) sets.

    Without the file (neither the workspace nor the install has configs/) the reports show no paper values.
    """
    import yaml

    config = config or next((path for path in PAPER_CONFIGS if path.is_file()), None)
    if config is None or not Path(config).is_file():
        return {}
    overrides = yaml.safe_load(Path(config).read_text()) or {}
    values = {}
    for path in space_paths:
        value = _lookup(overrides, path)
        if value is None and path in NULL_MEANS:
            value = _lookup(overrides, NULL_MEANS[path])
        if value is not None:
            values[path] = value
    return values


def _lookup(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def concurrency_text(state: dict[str, Any]) -> str:
    """'up to 3 at once', or 'as many at once as the cluster fits (2 now)'."""
    limit = state.get("max_concurrent_trials")
    if limit:
        return f"up to {limit} at once"
    fits = state.get("fits_now")
    return "as many at once as the cluster fits" + (f" ({fits} when the sweep started)" if fits else "")


def trial_rows(result_grid, space_paths: list[str], params: Params, max_epochs: int) -> list[dict[str, Any]]:
    """One row per trial: values, best val metric (and its epoch), epochs run, status."""
    rows = []
    for result in result_grid:
        frame = result.metrics_dataframe
        has_metric = frame is not None and METRIC in frame and frame[METRIC].notna().any()
        epochs = int(frame["training_iteration"].max()) if has_metric else 0
        best = float(frame[METRIC].max()) if has_metric else None
        best_epoch = int(frame.loc[frame[METRIC].idxmax(), "epoch"]) if has_metric else None
        if result.error is not None:
            status = "error"
        elif epochs >= max_epochs:
            status = "completed"
        else:
            status = "stopped early"
        trial_id = Path(result.path).name.removeprefix("trial_")
        values = {p: native(result.config.get(p), field_at(params, p)) for p in space_paths}
        rows.append({"trial_id": trial_id, **values, "best_val_metric": best, "best_epoch": best_epoch,
                     "epochs_run": epochs, "stopped_early": status == "stopped early", "status": status,
                     "error": None if result.error is None else first_line(str(result.error))})
    return sorted(rows, key=lambda r: (r["best_val_metric"] is None, -(r["best_val_metric"] or 0.0)))


def best_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The best trial that did not crash (a crashed trial's numbers are not trusted)."""
    candidates = [r for r in rows if r["status"] != "error" and r["best_val_metric"] is not None]
    if not candidates:
        raise UserError("no trial of the sweep finished an epoch without an error: see reports/sweep.md")
    return max(candidates, key=lambda r: r["best_val_metric"])


def adopt_command(best_flat: dict[str, Any], model_name: str) -> str:
    """The `dvc exp run` that trains the searched model with the winning values (model.name first:
    a sweep of `ctxemo sweep --model dagnet` is adopted for DAG-Net, whatever params.yaml names)."""
    settings = {"model.name": model_name, **best_flat}
    return "dvc exp run " + " ".join(f"-S {path}={value}" for path, value in settings.items())


def write_plots(rows: list[dict[str, Any]], params: Params, plots_dir: Path, metric_label: str,
                paper_settings: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots_dir.mkdir(parents=True, exist_ok=True)
    written = []
    styles = {"completed": ("o", "tab:blue"), "stopped early": ("v", "tab:orange"), "error": ("x", "tab:red")}
    for path, spec in model_space(params).items():
        kind = next(iter(spec))
        fig, ax = plt.subplots(figsize=(5, 3.6))
        for status, (marker, colour) in styles.items():
            points = [(r[path], r["best_val_metric"]) for r in rows
                      if r["status"] == status and r["best_val_metric"] is not None and r[path] is not None]
            if points:
                xs, ys = zip(*points)
                ax.scatter(xs, ys, marker=marker, color=colour, label=status, alpha=0.85)
        if kind == "loguniform":
            ax.set_xscale("log")
        if kind == "choice":
            ax.set_xticks(sorted(v for v in spec["choice"] if v is not None))
        title = f"sweep: {metric_label} vs {path}"
        searched = [r[path] for r in rows if r[path] is not None]
        paper = paper_settings.get(path)
        if paper is not None and searched and min(searched) <= paper <= max(searched):
            ax.axvline(paper, color="grey", linestyle="--", linewidth=1, label="paper")
        elif paper is not None:  # a line far off the searched range would squash the points
            title += f" (paper: {paper}, outside the searched range)"
        ax.set_xlabel(path)
        ax.set_ylabel(f"best {metric_label}")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        out = plots_dir / f"sweep_{path.replace('.', '_')}.png"
        fig.savefig(out, dpi=110)
        plt.close(fig)
        written.append(str(out))
    return written


def write_reports(rows: list[dict[str, Any]], state: dict[str, Any], params: Params,
                  wall_seconds: float) -> dict[str, Any]:
    """best_params.yaml, the plots, sweep.json and sweep.md; returns the summary (sweep.json)."""
    import yaml

    space_paths = state["space_paths"]
    report_dir, plots_dir = Path(state["report_dir"]), Path(state["plots_dir"])
    report_dir.mkdir(parents=True, exist_ok=True)
    metric_label = state["metric_name"]
    best = best_row(rows)
    best_flat = {p: best[p] for p in space_paths}
    counts = {s: sum(r["status"] == s for r in rows) for s in ("completed", "stopped early", "error")}
    paper = paper_values(space_paths)

    best_file = report_dir / "best_params.yaml"
    header = (f"# Best of Ray Tune sweep {state['name']}: {metric_label} {best['best_val_metric']:.4f} "
              f"(trial {best['trial_id']}, epoch {best['best_epoch']}).\n"
              f"# Only the searched paths; merge into params.yaml, e.g.\n#   {adopt_command(best_flat, params.model.name)}\n")
    best_file.write_text(header + yaml.safe_dump(nested(best_flat), sort_keys=True))

    plots = write_plots(rows, params, plots_dir, metric_label, paper)
    summary = {
        "name": state["name"], "experiment_path": state["experiment_path"], "command": state["command"],
        "metric": metric_label, "mode": MODE, "searcher": params.tune.searcher,
        "scheduler": {"name": "ASHA", "max_t": state["max_epochs"], "grace_period": params.tune.grace_period,
                      "reduction_factor": params.tune.reduction_factor},
        "data": state.get("data"), "frozen_backbone": state.get("body_cache") is not None,
        "body_cache": state.get("body_cache"),
        "num_samples": state["num_samples"], "max_epochs": state["max_epochs"],
        "max_concurrent_trials": state["max_concurrent_trials"], "fits_now": state.get("fits_now"),
        "resources_per_trial": state["resources"],
        "wall_seconds": round(wall_seconds, 1), "trials": counts,
        "best": {"trial_id": best["trial_id"], "val_metric": best["best_val_metric"], "epoch": best["best_epoch"],
                 "params": best_flat},
        "paper": paper,
        "adopt": adopt_command(best_flat, params.model.name), "mlflow_parent_run_id": state.get("parent_run_id"),
        "space": model_space(params), "rows": rows, "plots": plots,
    }
    (report_dir / "sweep.json").write_text(json.dumps(summary, indent=2))
    (report_dir / "sweep.md").write_text(_markdown(summary, state, params, best_file.name))
    return summary


def _markdown(summary: dict[str, Any], state: dict[str, Any], params: Params, best_file: str) -> str:
    from core.evaluation.report import markdown_table

    space_paths, rows, metric_label = state["space_paths"], summary["rows"], summary["metric"]
    best, counts, scheduler = summary["best"], summary["trials"], summary["scheduler"]
    defaults = {p: field_at(params, p) for p in space_paths}
    compare = markdown_table(["parameter", "best found", "params.yaml", "paper"],
                             [[p, best["params"][p], "null (all)" if defaults[p] is None else defaults[p],
                               summary["paper"].get(p)] for p in space_paths])
    short = {p: p.split(".")[-1] for p in space_paths}
    trials = markdown_table(
        ["trial", *short.values(), f"best {metric_label}", "best epoch", "epochs", "status", "error"],
        [[r["trial_id"], *(r[p] for p in space_paths), r["best_val_metric"], r["best_epoch"], r["epochs_run"],
          r["status"], r["error"] or ""] for r in rows])
    data = state.get("data") or {}
    data_line = (f"{data.get('kind')} at `{data.get('root')}`, "
                 + ", ".join(f"{n} {split} persons" for split, n in (data.get("persons") or {}).items()))
    return (
        f"# Ray Tune sweep `{state['name']}`\n\n"
        f"Command: `{state['command']}`\n\n"
        f"Data: {data_line}\n\n"
        f"{len(rows)} trials ({counts['completed']} completed, {counts['stopped early']} stopped early by ASHA, "
        f"{counts['error']} errored) in {summary['wall_seconds'] / 60:.1f} min wall time; searcher "
        f"{params.tune.searcher}, ASHA (max {scheduler['max_t']} epochs, grace {scheduler['grace_period']}, "
        f"reduction factor {scheduler['reduction_factor']}), {concurrency_text(state)}, "
        f"{state['resources']} per trial; frozen backbone: {state.get('body_cache') is not None}.\n"
        f"Metric: validation {metric_label} (best epoch of each trial).\n\n"
        f"## Best configuration ({metric_label} {best['val_metric']:.4f}, trial {best['trial_id']})\n\n"
        f"{compare}\n\nAdopt it: `{summary['adopt']}` (or merge `{best_file}`, next to this "
        "report, into params.yaml).\n\n"
        f"## Trials\n\n{trials}\n")
