"""The embedded-default main job behind `make demo` / `ctxemo demo`.

Generates the demo data set when it is missing, runs `dvc repro evaluate` (the main pipeline;
DVC decides what is stale, a second run does nothing) and prints what came out and where it
lives. `ctxemo compare` (`run_compare`) runs the comparison of every compare.models entry the
same way: `dvc repro compare_report`.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from core import env
from core.errors import UserError
from core.params import load_params
from core.workspace import Workspace
from pipelines import session_log


def stage_env() -> dict[str, str]:
    """The environment for DVC's stage commands: this interpreter's bin first on PATH.

    dvc.yaml says `python -m stages.X`; that must be the Python ctxemo is installed in.
    """
    return env.with_path_first(Path(sys.executable).parent)


def _annotations_present(root: Path, annotations: str | None) -> bool:
    return root.is_dir() and (annotations is None or (root / annotations).exists())


def run_demo(images: int | None = None, fresh: bool = False, workspace: Path = Path(".")) -> dict:
    started = time.perf_counter()
    ensure_demo_data(workspace, images=images, fresh=fresh)
    repro("evaluate", workspace)
    summary = describe_outputs(workspace)
    summary["report"] = str(write_report(workspace))
    print(f"[demo] finished in {time.perf_counter() - started:.0f} s; report: {summary['report']}", flush=True)
    return summary


def write_report(workspace: Path = Path(".")) -> Path:
    """The demo's last step: the HTML report of the evaluated model (what `ctxemo report` writes)."""
    from pipelines import report

    params = load_params(Workspace.at(workspace).params_file)
    print("[demo] writing the report", flush=True)
    index = report.run(Workspace.at(workspace, data_root=params.data.root), seed=params.seed).resolve()
    print(f"report: {index} (open it in a browser; the folder is self-contained)\n"
          f"predict: ctxemo predict <photo.jpg> --annotate out.png (the workspace's model until one is promoted)",
          flush=True)
    return index


def run_demo_logged(images: int | None = None, fresh: bool = False, workspace: Path = Path(".")) -> dict:
    """`run_demo` with everything it and the stages print (Ray's output too) in
    logs/demo-<time>.log; the terminal shows the stages, progress and results (pipelines/session_log.py)."""
    with session_log.session(workspace, "demo"):
        return run_demo(images=images, fresh=fresh, workspace=workspace)


def repro(target: str, workspace: Path = Path(".")) -> None:
    """`dvc repro <target>` in the workspace with this interpreter first on PATH."""
    print(f"[demo] dvc repro {target}", flush=True)
    code = session_log.call([sys.executable, "-m", "dvc", "repro", target], cwd=workspace, environ=stage_env())
    if code != 0:
        raise UserError(f"`dvc repro {target}` failed with exit code {code}; the stage's error is printed above")


def ensure_demo_data(workspace: Path = Path("."), images: int | None = None, fresh: bool = False) -> None:
    """Generate the demo data set (synth.*) when data.root is the demo folder and holds none yet."""
    params = load_params(Workspace.at(workspace).params_file)
    data_root = workspace / params.data.root
    synth_out = workspace / params.synth.out
    if data_root.resolve() != synth_out.resolve():
        raise UserError(f"the demo generates data into synth.out={params.synth.out} but data.root is "
                        f"{params.data.root}: point both at the same folder for the demo, or run `dvc repro` "
                        "directly on your own data")
    if fresh or not _annotations_present(data_root, params.data.annotations):
        from core.synth import generate

        count = images or params.synth.images
        print(f"[demo] generating {count} {params.synth.format} images into {synth_out} (seed {params.synth.seed})",
              flush=True)
        generate(synth_out, images=count, seed=params.synth.seed, fmt=params.synth.format)


def run_compare(workspace: Path = Path(".")) -> str:
    """`ctxemo compare`: every compare.models entry trained and evaluated (DVC reruns only stale
    branches), the demo data generated first when it is missing; returns the table."""
    started = time.perf_counter()
    ensure_demo_data(workspace)
    repro("compare_report", workspace)
    table = Workspace.at(workspace).compare_table
    print(f"[compare] finished in {time.perf_counter() - started:.0f} s; table: {table}", flush=True)
    return table.read_text()


def describe_outputs(workspace: Path) -> dict:
    """Print a short account of the pipeline outputs that exist, and return it."""
    summary: dict = {}
    ws = Workspace.at(workspace)
    ingest = ws.ingest_metrics
    if ingest.is_file():
        info = json.loads(ingest.read_text())
        summary["ingest"] = info
        counts = ", ".join(f"{split} {info['persons'][split]}" for split in ("train", "val", "test"))
        print(f"manifest: {ws.manifest_dir} (persons: {counts}); "
              f"quarantined {info['quarantined']} ({ws.manifest_dir / 'quarantine.parquet'})")
    # the per-class file has everything the headline reports/metrics.json has, and more
    metrics = ws.details_file if ws.details_file.is_file() else ws.metrics_file
    if metrics.is_file():
        from core.evaluation.report import print_metrics_table

        summary["metrics"] = json.loads(metrics.read_text())
        print_metrics_table(summary["metrics"])
        print(f"plots: {ws.plots_dir} (`dvc plots show` renders them); per-class figures: {ws.details_file}")
    run_file = ws.model_dir / "mlflow_run.json"
    if run_file.is_file():
        from core.tracking import tracking_uri

        run_id = json.loads(run_file.read_text())["run_id"]
        summary["mlflow_run_id"] = run_id
        print(f"MLflow run {run_id} in {tracking_uri(workspace)} "
              f"(browse: mlflow ui --backend-store-uri {tracking_uri(workspace)})")
    return summary
