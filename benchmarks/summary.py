"""One table of the performance goals (issue #20): each figure now, where it started, its target,
and whether it is met, read from the benchmarks' reports.

    python benchmarks/summary.py [--reports reports]

`make bench` prints it last. A report that is missing shows as "not measured" with the command
that makes it. Writes the table to reports/bench_summary.json too. "Before" is what the issue
measured on the same 2-core machine before the work on it.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

GIB = 1024  # MiB

# Issue #20's starting point on this machine (the same benchmarks' figures before the changes)
BEFORE = {
    "demo_seconds": 453.0,
    "demo_test_mAP": 0.270,
    "ray_train_vs_in_process": 0.73,
    "step_fraction_of_matmul_peak": 0.54,
    "ray_train_peak_pss_gib": 6.2,
    "objects_auto_over_loop": 0.32,
    "kosti_over_public_code": None,  # the public code alone was measured: 9.3-11 samples/s
}

COMMANDS = {"bench_demo": "python benchmarks/bench_demo.py",
            "bench_train": "python benchmarks/bench_train.py (in a workspace after `make demo`)",
            "bench_objects": "python benchmarks/bench_objects.py",
            "bench_kosti": "python benchmarks/bench_kosti.py (in a workspace after `make demo`)"}


def _row(goal: str, figure: str, now, target: str, met, before=None, detail: str = "", source: str = "") -> dict:
    return {"goal": goal, "figure": figure, "now": now, "before": before, "target": target, "met": met,
            "detail": detail, "source": source}


def _missing(goal: str, figure: str, target: str, source: str) -> dict:
    return _row(goal, figure, None, target, None, detail=f"not measured: {COMMANDS[source]}", source=source)


def demo_rows(demo: dict | None) -> list[dict]:
    if demo is None:
        return [_missing("1", "demo wall time, s", "<= 300", "bench_demo"),
                _missing("1", "demo test mAP", ">= 0.270", "bench_demo")]
    stages = ", ".join(f"{k} {v:.0f}" for k, v in demo["stage_seconds"].items())
    return [_row("1", "demo wall time, s", demo["demo_seconds"], "<= 300", demo["demo_seconds"] <= 300,
                 BEFORE["demo_seconds"], f"commit {demo['commit']}; stages (s): {stages}", "bench_demo"),
            _row("1", "demo test mAP", round(demo["test_mAP"], 4), ">= 0.270", demo["test_mAP"] >= 0.270,
                 BEFORE["demo_test_mAP"], f"val mAP {demo['val_mAP']:.4f}, baseline {demo['baseline_mAP']:.4f}",
                 "bench_demo")]


def _train_row(train: dict, runner: str, workers: int, loader: str) -> dict | None:
    return next((r for r in train["rows"]
                 if (r["runner"], r["workers"], r["loader"]) == (runner, workers, loader)), None)


def train_rows(train: dict | None) -> list[dict]:
    if train is None:
        return [_missing(g, f, t, "bench_train") for g, f, t in (
            ("2", "Ray Train 1 worker / in-process, samples/s", ">= 0.9"),
            ("2", "training step, fraction of the fp32 matmul peak", ">= 0.60"),
            ("3", "peak PSS of 1-worker training under Ray Train, GiB", "<= 3"))]
    rows = []
    inproc, ray1 = _train_row(train, "in-process", 1, "dataloader"), _train_row(train, "ray-train", 1, "dataloader")
    ratios = train.get("ratios", {})
    if "ray_train_vs_in_process_dataloader" in ratios:
        ratio = ratios["ray_train_vs_in_process_dataloader"]
        memory = ratios.get("ray_train_vs_in_process_in-memory")
        paired = train.get("paired_ratios", {}).get("dataloader")
        rounds = f"; per round {paired['by_round']}" if paired else ""
        rows.append(_row("2", "Ray Train 1 worker / in-process, samples/s", ratio, ">= 0.9", ratio >= 0.9,
                         BEFORE["ray_train_vs_in_process"],
                         f"fastest runs {ray1['samples_per_s']} vs {inproc['samples_per_s']} samples/s (DataLoader)"
                         f"{rounds}; in memory {memory}x; runs {ray1.get('all_samples_per_s')} vs "
                         f"{inproc.get('all_samples_per_s')}", "bench_train"))
    if inproc is not None and "achieved" in inproc:
        frac = inproc["achieved"]["fraction_of_matmul_peak"]
        step = train["step"]
        rows.append(_row("2", "training step, fraction of the fp32 matmul peak", frac, ">= 0.60", frac >= 0.6,
                         BEFORE["step_fraction_of_matmul_peak"],
                         f"{inproc['samples_per_s']} samples/s x {step['flops']['gflop_per_sample']} GFLOP = "
                         f"{inproc['achieved']['gflop_per_s']} of {step['matmul_peak']['gflop_per_s']} GFLOP/s "
                         "(in-process, DataLoader)", "bench_train"))
    else:
        rows.append(_missing("2", "training step, fraction of the fp32 matmul peak", ">= 0.60", "bench_train"))
    if ray1 is not None:
        gib = round(ray1["peak_pss_mib"] / GIB, 2)
        heaviest = ", ".join(f"{k} {v}" for k, v in list(ray1["peak_pss_by_process_mib"].items())[:4])
        rows.append(_row("3", "peak PSS of 1-worker training under Ray Train, GiB", gib, "<= 3", gib <= 3,
                         BEFORE["ray_train_peak_pss_gib"],
                         f"in-process {round(inproc['peak_pss_mib'] / GIB, 2)} GiB; by process (MiB): {heaviest}",
                         "bench_train"))
    return rows


def objects_rows(objects: dict | None) -> list[dict]:
    figure = "objects stage, engine auto / plain loop, images/s"
    if objects is None or "auto" not in objects:
        return [_missing("4", figure, ">= 1.0", "bench_objects")]
    auto = objects["auto"]
    return [_row("4", figure, auto["over_local"], ">= 1.0", auto["over_local"] >= 1.0,
                 BEFORE["objects_auto_over_loop"],
                 f"{objects['data']['images']} images: auto runs {auto['engine']} ({auto['reason']}); Ray Data "
                 f"{objects['ray']['images_per_s']} vs loop {objects['local']['images_per_s']} images/s; arrays "
                 f"bit-identical: {objects['identical_arrays']}, features at most "
                 f"{objects.get('max_feature_fp16_steps_apart', '?')} float16 steps of their vector's scale apart "
                 f"(max difference {objects['max_abs_feature_difference']}; torch threads differ: the loop all, each "
                 "actor 1)", "bench_objects")]


def kosti_rows(kosti: dict | None) -> list[dict]:
    figure = "Kosti (public-code shapes) / the public code, samples/s"
    if kosti is None or "ours" not in kosti.get("versus_public_code", {}):
        return [_missing("5", figure, ">= 1.2", "bench_kosti")]
    versus = kosti["versus_public_code"]
    ours = versus["ours"]
    best = max(ours, key=lambda name: ours[name]["over_public_code"])
    ratio = ours[best]["over_public_code"]
    each = "; ".join(f"train.precision {name}: {o['best']} samples/s = {o['over_public_code']}x (by round "
                     f"{o['over_public_code_by_round']})" for name, o in ours.items())
    return [_row("5", figure, ratio, ">= 1.2", ratio >= 1.2, BEFORE["kosti_over_public_code"],
                 f"best with train.precision {best}; the public code (fp32) {versus['public_code_best']} samples/s "
                 f"side by side; {each}; the fp32 step at "
                 f"{100 * kosti['figures']['achieved_in_memory']['fraction_of_matmul_peak']:.0f}% of the fp32 matmul peak",
                 "bench_kosti")]


def machine_of(report: dict | None) -> str | None:
    """The CPU a report was measured on, as its `machine` names it (reports before it did: unknown)."""
    if report is None:
        return None
    found = report.get("machine") or {}
    cpus = found.get("cpus", report.get("cpus"))
    return f"{found.get('cpu_model') or 'CPU not recorded'}, {cpus} CPUs"


def summarise(reports: dict[str, dict | None]) -> list[dict]:
    """Every goal's rows from the reports (None where a report is missing), each with its machine."""
    rows = [*demo_rows(reports.get("bench_demo")), *train_rows(reports.get("bench_train")),
            *objects_rows(reports.get("bench_objects")), *kosti_rows(reports.get("bench_kosti"))]
    for row in rows:
        row["machine"] = machine_of(reports.get(row["source"]))
    return rows


def render(rows: list[dict]) -> str:
    def show(value) -> str:
        return "-" if value is None else str(value)

    head = f"{'goal':<5}{'figure':<58}{'before':>8}{'now':>9}  {'target':<9}{'met':<5}"
    lines = [head, "-" * len(head)]
    for row in rows:
        met = "?" if row["met"] is None else ("yes" if row["met"] else "NO")
        lines.append(f"{row['goal']:<5}{row['figure']:<58}{show(row['before']):>8}{show(row['now']):>9}  "
                     f"{row['target']:<9}{met:<5}")
        if row["detail"]:
            lines.append(f"{'':<5}  {row['detail']}")
        if row.get("machine"):
            lines.append(f"{'':<5}  measured on: {row['machine']}")
    return "\n".join(lines)


def load_reports(folder: Path) -> dict[str, dict | None]:
    found = {}
    for name in COMMANDS:
        path = folder / f"{name}.json"
        found[name] = json.loads(path.read_text()) if path.is_file() else None
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reports", type=Path, default=Path("reports"))
    args = parser.parse_args()
    rows = summarise(load_reports(args.reports))
    print(render(rows))
    (args.reports / "bench_summary.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
