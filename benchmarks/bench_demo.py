"""The demo as a new user gets it: `ctxemo demo` in a fresh clone, its wall time by stage and its
test mAP.

    python benchmarks/bench_demo.py [--repo .] [--keep]

Clones the repository's HEAD (committed work only: say so when the tree has changes) into a
temporary folder and runs `python -m pipelines.cli demo` there with this interpreter, so the code
is the clone's and the installed packages are this environment's (the install itself is not
timed: it is a one-off). Every line the demo prints is stamped as it arrives; a stage's time runs
from DVC's "Running stage 'NAME'" line to the next stage's line (the last one to the end of
`dvc repro`), so DVC's own bookkeeping between stages counts with the stage before it. Reads the
test metrics from the clone's reports/metrics.json and writes reports/bench_demo.json. Nothing is
asserted; other load on the machine distorts the times (the load averages are in the report).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from perf import machine

STAGE_LINE = re.compile(r"Running stage '(?P<stage>[^']+)'")
FINISHED_LINE = re.compile(r"\[demo\] finished in")
REPRO_DONE = re.compile(r"\[demo\] writing the report|Use `dvc push`|Data and pipelines are up to date")


def stage_seconds(stamped: list[tuple[float, str]], end: float) -> dict[str, float]:
    """Seconds from each "Running stage" line to the next one (the last to the end of `dvc repro`)."""
    starts = [(t, m["stage"]) for t, line in stamped if (m := STAGE_LINE.search(line))]
    repro_end = next((t for t, line in stamped if REPRO_DONE.search(line)), end)
    bounds = [t for t, _ in starts[1:]] + [repro_end]
    return {stage: round(stop - start, 1) for (start, stage), stop in zip(starts, bounds, strict=True)}


def run_demo(clone: Path) -> tuple[float, list[tuple[float, str]], int]:
    env = {**os.environ, "CTXEMO_PROGRESS": "plain", "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "demo"], cwd=clone, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stamped = []
    for line in proc.stdout:
        stamped.append((time.perf_counter() - started, line.rstrip("\n")))
        print(line, end="", flush=True)
    code = proc.wait()
    return time.perf_counter() - started, stamped, code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=Path("."), help="the git repository to clone (default: .)")
    parser.add_argument("--keep", action="store_true", help="keep the clone (its path is printed)")
    parser.add_argument("--out", type=Path, default=Path("reports/bench_demo.json"))
    args = parser.parse_args()
    repo, out = args.repo.resolve(), args.out.resolve()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True,
                            check=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                                capture_output=True, text=True, check=True).stdout.strip())
    if dirty:
        print(f"bench_demo: the working tree has uncommitted changes; this measures the commit {commit}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench_demo_"))
    clone = work / "ctxemo"
    subprocess.run(["git", "clone", "--quiet", str(repo), str(clone)], check=True)
    load_start = [round(x, 2) for x in os.getloadavg()]
    code = None
    try:
        seconds, stamped, code = run_demo(clone)
        if code != 0:
            sys.exit(f"bench_demo: `ctxemo demo` failed with exit code {code} (clone kept in {clone})")
        metrics = json.loads((clone / "reports" / "metrics.json").read_text())
        stages = stage_seconds(stamped, seconds)
    finally:
        if not args.keep and code == 0:
            shutil.rmtree(work, ignore_errors=True)
    report = {"commit": commit, "uncommitted_changes_not_measured": dirty, "machine": machine(os.cpu_count() or 1),
              "load_avg_start": load_start, "load_avg_end": [round(x, 2) for x in os.getloadavg()],
              "demo_seconds": round(seconds, 1), "stage_seconds": stages,
              "test_mAP": metrics.get("mAP"), "val_mAP": metrics.get("val_mAP"),
              "baseline_mAP": metrics.get("baseline_mAP"), "metrics": metrics,
              "note": "`ctxemo demo` in a fresh clone of `commit` with this environment's packages (the "
                      "install not timed): demo data generation, dvc repro evaluate and the report. Goal #20: "
                      "demo_seconds <= 300 with test_mAP >= 0.270 (seed 0) on the 2-core machine."}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\ndemo (commit {commit}): {seconds:.0f} s; test mAP {metrics.get('mAP'):.4f}; stages: "
          + ", ".join(f"{k} {v:.0f} s" for k, v in stages.items()))
    print(f"written {out}" + (f"; clone kept in {clone}" if args.keep else ""))


if __name__ == "__main__":
    main()
