"""`make bench`: every benchmark, each writing reports/bench_*.json.

The training benchmarks (bench_train, bench_kosti) need a workspace with the data stages done: they use the current
directory after `make demo` (or `dvc repro embeddings objects`).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent

for script, args in (("bench_model.py", []), ("bench_objects.py", []), ("bench_train.py", []),
                     ("bench_kosti.py", []), ("bench_context_models.py", [])):
    print(f"== {script}", flush=True)
    code = subprocess.call([sys.executable, str(HERE / script), *args])
    if code != 0:
        sys.exit(f"{script} failed with exit code {code}")
