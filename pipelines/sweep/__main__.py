"""`python -m pipelines.sweep [OPTIONS]`: `ctxemo sweep [OPTIONS]` for cluster jobs without the
console script on PATH (infra/kuberay/rayjob-sweep.yaml runs it)."""
import sys

from pipelines.cli import app

if __name__ == "__main__":
    # as if typed as `ctxemo sweep ...`: the command recorded in the sweep's reports reads that way
    sys.argv = ["ctxemo", "sweep", *sys.argv[1:]]
    app(prog_name="ctxemo")
