"""`make bench`: every benchmark, each writing reports/bench_*.json.

The training benchmark needs a workspace with the data stages done: it uses the current
directory after `make demo` (or `dvc repro embeddings objects`).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent

for script, args in (("bench_model.py", []), ("bench_objects.py", []), ("bench_train.py", [])):
    print(f"== {script}", flush=True)
    code = subprocess.call([sys.executable, str(HERE / script), *args])
    if code != 0:
        sys.exit(f"{script} failed with exit code {code}")
