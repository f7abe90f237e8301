"""`make bench`: every benchmark, each writing reports/bench_*.json, then one table of the goals.

bench_demo runs `ctxemo demo` in a fresh clone of HEAD (about 5 minutes here). The training
benchmarks (bench_train, bench_kosti) need a workspace with the data stages done: they use the
current directory after `make demo` (or `dvc repro embeddings objects`). The last step,
benchmarks/summary.py, prints each goal's figure now, before, its target and whether it is met.

    python benchmarks/run_all.py [--only bench_train ...] [--summary-only]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
SCRIPTS = ("bench_demo", "bench_model", "bench_objects", "bench_train", "bench_kosti", "bench_context_models")

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--only", nargs="+", choices=SCRIPTS, help="run these benchmarks only")
parser.add_argument("--summary-only", action="store_true", help="print the goals' table from the reports there")
args = parser.parse_args()

for script in () if args.summary_only else (args.only or SCRIPTS):
    print(f"== {script}", flush=True)
    code = subprocess.call([sys.executable, str(HERE / f"{script}.py")])
    if code != 0:
        sys.exit(f"{script} failed with exit code {code}")
print("== summary", flush=True)
sys.exit(subprocess.call([sys.executable, str(HERE / "summary.py")]))
