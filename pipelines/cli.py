"""`ctxemo`: the one command users see.

    ctxemo synth --out data/raw/demo --images 240 --seed 0 --format emotic
    ctxemo demo                 # generate demo data, run the pipeline, print the results
    ctxemo stage ingest         # any DVC stage by name (same as `python -m stages.ingest`)
    ctxemo storage              # where data, runs and checkpoints go (S3 settings from the environment)

Heavy libraries are imported inside the commands so `ctxemo --help` stays instant.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from core import env
from core.workspace import DEFAULT_WORKSPACE

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split("\n\n")[0])

STAGES = ("ingest", "detect", "objects", "people", "cooccurrence", "embeddings", "train", "evaluate")


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def _print_version(value: bool) -> None:
    if value:
        import importlib.metadata

        typer.echo(f"ctxemo {importlib.metadata.version('ctxemo')}")
        raise typer.Exit()


@app.callback()
def _embedded_defaults(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="print ctxemo's version and exit"),
) -> None:
    """Telemetry off for Ray, DVC, Prefect and MLflow unless the user says otherwise (core/env.py)."""
    env.apply_embedded_defaults()


@app.command()
def synth(
    out: Path | None = typer.Option(None, help="output folder (default: synth.out of params.yaml)"),
    images: int | None = typer.Option(None, min=1, help="number of images (default: synth.images)"),
    seed: int | None = typer.Option(None, help="random seed, same seed -> identical data set (default: synth.seed)"),
    format: str | None = typer.Option(None, "--format", help="emotic | caers (default: synth.format)"),
    params_file: Path = typer.Option(DEFAULT_WORKSPACE.params_file, "--params"),
) -> None:
    """Generate a demo data set whose labels follow body, face and context cues."""
    from core.errors import UserError
    from core.synth import generate

    # Options given on the command line win; the rest come from params.yaml's synth section,
    # so `ctxemo synth` and `ctxemo demo` make the same data set.
    defaults = _workspace_params(params_file).synth if params_file.is_file() else None
    if defaults is None and None in (out, images, seed, format):
        _fail(f"{params_file} not found: pass --out, --images, --seed and --format, or run in a workspace")
    out = out if out is not None else Path(defaults.out)
    images = images if images is not None else defaults.images
    seed = seed if seed is not None else defaults.seed
    format = format if format is not None else defaults.format
    if format not in ("emotic", "caers"):
        _fail(f"--format must be 'emotic' or 'caers', not {format!r}")
    try:
        summary = generate(out, images=images, seed=seed, fmt=format)
    except UserError as exc:
        _fail(str(exc))
    persons = ", ".join(f"{split} {n}" for split, n in summary["persons"].items())
    typer.echo(f"wrote {format} demo data to {out}: {sum(summary['images'].values())} images; persons {persons}")


@app.command()
def stage(name: str = typer.Argument(..., help=" | ".join(STAGES))) -> None:
    """Run one pipeline stage with params.yaml (what `dvc repro` runs); its full log goes to logs/."""
    if name not in STAGES:
        _fail(f"unknown stage {name!r}; choose one of {', '.join(STAGES)}")
    from pipelines import session_log
    from pipelines.demo import stage_env

    # a child process, so that its whole output (Ray's C++ lines too) reaches logs/stage-<name>-*.log
    with session_log.session(Path("."), f"stage-{name}", tag=name):
        code = session_log.call([sys.executable, "-m", f"stages.{name}"], environ=stage_env())
    raise typer.Exit(code=code)


@app.command()
def demo(
    images: int | None = typer.Option(None, help="override synth.images from params.yaml"),
    fresh: bool = typer.Option(False, help="regenerate the demo data even if it exists"),
) -> None:
    """Generate demo data (if missing), run the pipeline on it and print where everything is (full log: logs/)."""
    from core.errors import UserError
    from models.config import ConfigError
    from pipelines.demo import run_demo_logged

    try:
        run_demo_logged(images=images, fresh=fresh)
    except (UserError, ConfigError) as exc:
        _fail(str(exc))


@app.command()
def compare() -> None:
    """Train and evaluate every compare.models entry on the same data; write reports/compare.md."""
    from core.errors import UserError
    from models.config import ConfigError
    from pipelines.demo import run_compare

    try:
        print(run_compare())
    except (UserError, ConfigError) as exc:
        _fail(str(exc))


@app.command()
def configure(
    overrides: Path = typer.Argument(..., help="a YAML file of params.yaml keys to change (e.g. configs/paper-emotic.yaml)"),
    params_file: Path = typer.Option(DEFAULT_WORKSPACE.params_file, "--params"),
    dry_run: bool = typer.Option(False, help="print the changes without writing"),
) -> None:
    """Merge a config file into params.yaml (every key must already exist; the result is validated)."""
    from models.config import ConfigError
    from pipelines.configure import merge_config

    try:
        changes = merge_config(params_file, overrides, write=not dry_run)
    except ConfigError as exc:
        _fail(str(exc))
    for dotted, (old, new) in changes.items():
        typer.echo(f"{dotted}: {old!r} -> {new!r}")
    typer.echo(("would change" if dry_run else "changed") + f" {len(changes)} key(s) in {params_file}")


VARIANT_HELP = ("a column of the paper's Table 4 (repeatable; default all ten): baseline, bpa_only, boa_only, "
                "eld_only, no_eld, no_bpa, no_boa, no_geometry, mobilenet_v2, full")


@app.command()
def ablate(
    variant: list[str] = typer.Option(None, "--variant", help=VARIANT_HELP),
    seed: list[int] = typer.Option(None, "--seed", help="train each variant with this seed (repeatable; default: params' seed)"),
    fresh: bool = typer.Option(False, "--fresh", help="retrain runs that finished before with the same params, code and data"),
    frozen_backbone: bool = typer.Option(False, "--frozen-backbone",
                                         help="backbone maps computed once, the rest trains (train.frozen_backbone)"),
    params_file: Path = typer.Option(DEFAULT_WORKSPACE.params_file, "--params"),
) -> None:
    """Train and evaluate the paper's ablations on the same data; write reports/ablations.{md,json}."""
    from core.errors import UserError
    from core.params import read_yaml
    from pipelines import ablation

    try:
        result = ablation.run(read_yaml(params_file), variant or tuple(ablation.VARIANTS), seed or None,
                              reuse=not fresh, frozen_backbone=frozen_backbone)
    except (UserError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(result["markdown"])
    report = Path(result["report"])
    typer.echo(f"written: {report}, {report.with_suffix('.json')}")


@app.command()
def diagnose(
    split: str = typer.Option("val", help="val | test: the persons whose BOA attention and BPA gates are recorded"),
    nearest: int = typer.Option(3, min=1, help="attention mass on this many objects nearest the person"),
    model_dir: Path | None = typer.Option(None, "--model-dir", help="a folder holding model.pt (default: artifacts/model)"),
    probe: bool = typer.Option(True, "--probe/--no-probe", help="the linear probe on the stored object features"),
    out: Path | None = typer.Option(None, "--out", help="folder for diagnose.{md,json} (default: reports/)"),
    params_file: Path = typer.Option(DEFAULT_WORKSPACE.params_file, "--params"),
) -> None:
    """What the trained rrla model attends to (BOA mass near the person, BPA gates) and a linear probe."""
    from core.errors import UserError
    from core.workspace import Workspace
    from pipelines import diagnose as diagnose_pipeline

    if split not in diagnose_pipeline.SPLITS:
        _fail(f"--split must be one of {', '.join(diagnose_pipeline.SPLITS)}, not {split!r}")
    params = _workspace_params(params_file)
    paths = Workspace.at(data_root=params.data.root)
    paths = paths.moved(model_dir=model_dir) if model_dir is not None else paths
    if not (Path(paths.model_dir) / "model.pt").is_file():
        _fail(f"no trained model at {Path(paths.model_dir) / 'model.pt'}: run `make demo` or `dvc repro train` "
              "first, or pass --model-dir")
    try:
        result = diagnose_pipeline.run(paths, split=split, nearest=nearest, with_probe=probe,
                                       batch_size=params.for_model("rrla").train.batch_size, seed=params.seed)
    except (UserError, ValueError) as exc:
        _fail(str(exc))
    md, js = diagnose_pipeline.write_report(result, out or paths.reports_dir)
    typer.echo(md.read_text())
    typer.echo(f"written: {md}, {js}")


@app.command()
def report(
    out: Path | None = typer.Option(None, "--out", help="folder for index.html and its figures (default: reports/report/)"),
    persons: int = typer.Option(6, min=2, help="test persons shown: the best and the worst predicted, the rest "
                                               "drawn with params' seed"),
    model_dir: Path | None = typer.Option(None, "--model-dir", help="a folder holding model.pt, evaluated beside it "
                                                                    "(default: artifacts/model, evaluated in reports/)"),
    mlflow: bool = typer.Option(True, "--mlflow/--no-mlflow", help="log the folder to the model's MLflow run (report/)"),
    params_file: Path = typer.Option(DEFAULT_WORKSPACE.params_file, "--params"),
) -> None:
    """A static HTML report of the evaluated model: metrics, PR curves, co-occurrence, BOA/BPA/ELD per person."""
    from core.errors import UserError
    from core.workspace import Workspace
    from models.config import ConfigError
    from pipelines import report as report_pipeline

    params = _workspace_params(params_file)
    paths = Workspace.at(data_root=params.data.root)
    paths = report_pipeline.model_paths(paths, model_dir) if model_dir is not None else paths
    if not (Path(paths.model_dir) / "model.pt").is_file():
        _fail(f"no trained model at {Path(paths.model_dir) / 'model.pt'}: run `make demo` (or `dvc repro evaluate`) "
              "first, or pass --model-dir")
    try:
        index = report_pipeline.run(paths, out, persons=persons, seed=params.seed, log=mlflow)
    except (UserError, ConfigError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(f"written: {index} (open it in a browser; the folder is self-contained)")


@app.command()
def sweep(
    samples: int | None = typer.Option(None, min=1, help="number of trials (default: tune.num_samples)"),
    max_epochs: int | None = typer.Option(None, "--max-epochs", min=1,
                                             help="epochs per trial (default: tune.max_epochs)"),
    resume: bool = typer.Option(False, "--resume", help="continue the last interrupted sweep of this workspace"),
    model: str | None = typer.Option(None, "--model", help="sweep this model family over tune.space.<model> "
                                                           "(default: model.name)"),
    params_file: Path = typer.Option(DEFAULT_WORKSPACE.params_file, "--params"),
) -> None:
    """Ray Tune sweep over tune.space.<model> (ASHA); writes reports/best_params.yaml, reports/sweep.{md,json}."""
    from core.errors import UserError
    from core.params import apply_overrides, params_from_dict, read_yaml
    from core.workspace import Workspace
    from pipelines import sweep as sweep_pipeline

    command = " ".join(["ctxemo sweep", *sys.argv[2:]])
    try:
        params_dict = read_yaml(params_file)
        if model is not None:
            if resume:
                raise UserError("--resume continues the interrupted sweep with its own model; drop --model")
            params_dict = apply_overrides(params_dict, {"model.name": model})
        paths = Workspace.at(data_root=params_from_dict(params_dict).data.root)
        result = sweep_pipeline.run(params_dict, paths, samples=samples, max_epochs=max_epochs, resume=resume,
                                    command=command)
    except (UserError, ValueError) as exc:
        _fail(str(exc))
    if result["interrupted"]:
        typer.echo(f"sweep {result['name']} interrupted; continue it with `ctxemo sweep --resume`")
        raise typer.Exit(code=130)
    counts = ", ".join(f"{n} {status}" for status, n in result["trials"].items())
    typer.echo(f"sweep {result['name']}: {counts} in {result['wall_seconds'] / 60:.1f} min")
    typer.echo(f"best {result['metric']} {result['best']['val_metric']:.4f}: {result['best']['params']}")
    typer.echo(f"adopt with: {result['adopt']}")
    typer.echo("written: reports/best_params.yaml, reports/sweep.md, reports/sweep.json, reports/sweep_plots/sweep_*.png")


# --------------------------------------------------------------------------- retraining, registry, predict


def _registered_name(params) -> str:
    return params.registry.name_for(params.model.name)


def _workspace_params(params_file: Path):
    from core.params import load_params
    from models.config import ConfigError

    try:
        return load_params(params_file)
    except ConfigError as exc:
        _fail(str(exc))


@app.command()
def retrain(
    pull: bool = typer.Option(False, "--pull", help="dvc pull before reproducing"),
    push: bool = typer.Option(False, "--push", help="dvc push after the promotion"),
    promote: bool = typer.Option(True, "--promote/--no-promote", help="move the champion alias when the gate passes"),
    serve: bool = typer.Option(False, "--serve", help="stay running and start the flow on the --cron schedule"),
    cron: str | None = typer.Option(None, help="cron schedule for --serve (default: the deployment's schedule in "
                                                "infra/prefect/prefect.yaml, Mondays 04:00 UTC)"),
    name: str = typer.Option("retrain-weekly", help="deployment name for --serve"),
    summary_file: Path | None = typer.Option(None, "--summary", help="also write the run's summary (each step's "
                                                                      "outcome, seconds and Ray node) to this JSON file"),
) -> None:
    """Prefect flow: [dvc pull] -> a task per DVC stage (on Ray) -> register -> promote -> tag dvc.lock -> [push]."""
    _workspace_params(DEFAULT_WORKSPACE.params_file)  # the flow reads them too: a bad value stops here, in one line
    from pipelines import flows

    parameters = {"workspace": str(Path(".").resolve()), "pull": pull, "push": push, "promote": promote}
    if serve:
        from core.errors import UserError

        try:
            cron, timezone = (cron, "UTC") if cron else flows.deployment_schedule(name)
        except UserError as exc:
            _fail(str(exc))
        typer.echo(f"serving deployment retrain/{name} on cron {cron!r} ({timezone}); Ctrl-C stops it")
        flows.serve_retrain(name=name, cron=cron, timezone=timezone, parameters=parameters)
        return
    state = flows.retrain(**parameters, return_state=True)
    if not state.is_completed():
        _fail(f"retrain flow run {state.name}: {state.message}")
    summary = state.result()
    if summary_file is not None:
        summary_file.write_text(json.dumps(summary, indent=2, default=str))
    if summary.get("decision"):
        typer.echo(summary["decision"]["explanation"])
    typer.echo(f"retrain finished: model version {summary.get('version')}, champion {summary.get('champion')}")


@app.command("ablate-flow")
def ablate_flow(
    variant: list[str] = typer.Option(None, "--variant", help=VARIANT_HELP),
    seed: list[int] = typer.Option(None, "--seed", help="train each variant with this seed (repeatable; default: params' seed)"),
    frozen_backbone: bool = typer.Option(False, "--frozen-backbone",
                                         help="backbone maps computed once, the rest trains (train.frozen_backbone)"),
    params_file: Path = typer.Option(DEFAULT_WORKSPACE.params_file, "--params"),
) -> None:
    """The ablations as a Prefect flow: variants trained in parallel as Ray tasks (RayTaskRunner)."""
    _workspace_params(params_file)  # the flow reads them too: a bad value stops here, in one line
    from pipelines import ablation, flows

    state = flows.ablations(workspace=str(Path(".").resolve()), variants=variant or list(ablation.VARIANTS),
                            seeds=seed or None, params_file=str(params_file), frozen_backbone=frozen_backbone,
                            return_state=True)
    if not state.is_completed():
        _fail(f"ablations flow run {state.name}: {state.message}")
    typer.echo(state.result()["markdown"])


@app.command("promote")
def promote_model(
    dry_run: bool = typer.Option(False, "--dry-run", help="explain the decision; register and move nothing"),
    version: str | None = typer.Option(None, help="gate this registered version instead of the workspace's model"),
    params_file: Path = typer.Option(DEFAULT_WORKSPACE.params_file, "--params"),
) -> None:
    """Register the evaluated model as challenger; make it champion if it beats the champion by registry.min_improvement."""
    from core.errors import UserError
    from pipelines import registry

    params = _workspace_params(params_file)
    name, threshold = params.registry.name_for(params.model.name), params.registry.min_improvement
    try:
        if version is None:
            decision = registry.register_and_promote(Path("."), name, threshold, dry_run=dry_run).decision
        else:
            decision = registry.gate_version(name, version, threshold, dry_run=dry_run, workspace=Path("."))
    except UserError as exc:
        _fail(str(exc))
    typer.echo(decision.explain())


@app.command("predict")
def predict_images(
    images: list[Path] = typer.Argument(..., help="image files"),
    box: list[str] = typer.Option(None, "--box", help="x1,y1,x2,y2 of a person (repeatable, for every image); default: detect people"),
    model: str | None = typer.Option(None, "--model", help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID or a local artifacts folder [default: models:/<registry.model_name for model.name>@champion, else the workspace's artifacts/model]"),
    annotate: Path | None = typer.Option(None, "--annotate", help="write an annotated PNG (a folder when several images are given)"),
    params_file: Path = typer.Option(DEFAULT_WORKSPACE.params_file, "--params"),
) -> None:
    """Emotions (with scores) of each person in the images, as JSON; optionally an annotated image."""
    import json

    from core.errors import UserError
    from pipelines import predict

    env.set_default("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # stdout/stderr stay readable

    try:
        boxes = [predict.parse_box(b) for b in box] if box else None
        if model is None:
            model, notice = predict.default_model(_registered_name(_workspace_params(params_file)), Path("."))
            if notice:
                typer.echo(f"ctxemo predict: {notice}", err=True)
        results = predict.run(images, model, boxes=boxes, annotate_to=annotate, workspace=Path("."))
    except UserError as exc:
        _fail(str(exc))
    if notice := predict.people_notice(results):
        typer.echo(f"ctxemo predict: {notice}", err=True)
    typer.echo(json.dumps(results[0] if len(results) == 1 else results, indent=2))


@app.command("predict-batch")
def predict_batch(
    src: str | None = typer.Argument(None, help="a folder or s3://bucket/prefix [default: CTXEMO_BATCH_INPUT_URI]"),
    out: str | None = typer.Option(None, "--out", help="the folder the Parquet files go to, local or s3:// [default: CTXEMO_BATCH_OUTPUT_URI/predictions-<UTC time>]"),
    model: str | None = typer.Option(None, "--model", help="as for `ctxemo predict` [default: the champion]"),
    boxes: Path | None = typer.Option(None, "--boxes", help="CSV image,x1,y1,x2,y2 of known people (image relative to SRC)"),
    batch_size: int = typer.Option(4, min=1, help="images per Ray Data batch"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace the files already in --out"),
    params_file: Path = typer.Option(DEFAULT_WORKSPACE.params_file, "--params"),
) -> None:
    """Predict every image of a folder or S3 prefix with Ray Data; the workers write per-person rows as Parquet."""
    import json

    from core.errors import UserError
    from core.storage import StorageSettings
    from pipelines import batch_predict, predict

    try:
        settings = StorageSettings.from_env()
        if src is None or out is None:
            default_src, default_out = batch_predict.default_locations(settings)
            src, out = src or default_src, out or default_out
        if model is None:
            model = predict.default_model_uri(_registered_name(_workspace_params(params_file)))
        summary = batch_predict.run(src, out, model, boxes_file=boxes, batch_size=batch_size,
                                    overwrite=overwrite, settings=settings)
    except UserError as exc:
        _fail(str(exc))
    typer.echo(json.dumps(summary, indent=2))


@app.command()
def storage(
    command: str | None = typer.Argument(None, help="dvc-remote: point DVC's default remote at s3://BUCKET/PREFIX/dvc"),
    name: str = typer.Option("storage", "--name", help="name of the DVC remote for dvc-remote"),
) -> None:
    """Print where data, MLflow artifacts and Ray checkpoints go (S3 settings from the environment; never a secret)."""
    import json

    from core.errors import UserError
    from core.storage import StorageSettings

    try:
        settings = StorageSettings.from_env()
        if command == "dvc-remote":
            settings.configure_dvc_remote(".", name)
            typer.echo(f"DVC remote {name!r} -> {settings.dvc_remote_url()} (default)")
            return
        if command is not None:
            raise UserError(f"unknown command {command!r}; use no argument or `dvc-remote`")
        typer.echo(json.dumps(settings.describe(), indent=2))
    except UserError as exc:
        _fail(str(exc))


if __name__ == "__main__":
    app()
