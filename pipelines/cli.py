"""`ctxemo`: the one command users see.

    ctxemo synth --out data/raw/demo --images 240 --seed 0 --format emotic
    ctxemo demo                 # generate demo data, run the pipeline, print the results
    ctxemo stage ingest         # any DVC stage by name (same as `python -m stages.ingest`)

Heavy libraries are imported inside the commands so `ctxemo --help` stays instant.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Optional

import typer

from pipelines.env import apply_embedded_defaults

apply_embedded_defaults()

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split("\n\n")[0])

STAGES = ("ingest", "detect", "objects", "cooccurrence", "embeddings", "train", "evaluate")


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


@app.command()
def synth(
    out: Path = typer.Option(Path("data/raw/demo"), help="output folder of the generated data set"),
    images: int = typer.Option(240, min=1, help="number of images"),
    seed: int = typer.Option(0, help="random seed (same seed -> identical data set)"),
    format: str = typer.Option("emotic", "--format", help="emotic | caers"),
) -> None:
    """Generate a demo data set whose labels follow body, face and context cues."""
    from stages.data.synth import generate
    from stages.errors import UserError

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
    """Run one pipeline stage with params.yaml (what `dvc repro` runs)."""
    if name not in STAGES:
        _fail(f"unknown stage {name!r}; choose one of {', '.join(STAGES)}")
    module = importlib.import_module(f"stages.{name}")
    sys.argv = [f"stages.{name}"]
    code = module.main()
    raise typer.Exit(code=code or 0)


@app.command()
def demo(
    images: Optional[int] = typer.Option(None, help="override synth.images from params.yaml"),
    fresh: bool = typer.Option(False, help="regenerate the demo data even if it exists"),
) -> None:
    """Generate demo data (if missing), run the pipeline on it and print where everything is."""
    from pipelines.demo import run_demo
    from stages.errors import UserError

    try:
        run_demo(images=images, fresh=fresh)
    except UserError as exc:
        _fail(str(exc))


@app.command()
def ablate(
    variant: list[str] = typer.Option(None, "--variant", help="full | no_boa | no_bpa | no_eld | no_geometry (repeatable; default all)"),
    params_file: Path = typer.Option(Path("params.yaml"), "--params"),
) -> None:
    """Train and evaluate the paper's ablations on the same data; write reports/ablations.{md,json}."""
    from pipelines import ablation
    from stages.errors import UserError
    from stages.params import read_yaml

    try:
        result = ablation.run(read_yaml(params_file), variant or tuple(ablation.VARIANTS))
    except (UserError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(result["markdown"])
    typer.echo("written: reports/ablations.md, reports/ablations.json")


if __name__ == "__main__":
    app()
