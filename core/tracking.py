"""MLflow wiring shared by train, evaluate, the registry and the sweep.

Embedded default: a SQLite store under the workspace (`mlflow.db`, artifacts in
`mlartifacts/`). `MLFLOW_TRACKING_URI` (and, for artifacts on S3, the usual
`MLFLOW_S3_ENDPOINT_URL` / AWS variables) points at a real server instead.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any, Iterator

from core import env


def tracking_uri(workspace: Path | None = None) -> str:
    uri = env.mlflow_tracking_uri()
    if uri:
        return uri
    return embedded_tracking_uri(workspace)


def embedded_tracking_uri(workspace: Path | None = None) -> str:
    """The workspace's own SQLite store, used when MLFLOW_TRACKING_URI is not set."""
    return f"sqlite:///{(workspace or Path.cwd()).resolve() / 'mlflow.db'}"


def artifact_location(workspace: Path | None = None) -> str | None:
    """Where a new experiment keeps artifacts.

    CTXEMO_MLFLOW_ARTIFACT_ROOT wins; with a tracking server and nothing set, the server
    decides (None); locally, the S3 bucket when CTXEMO_S3_BUCKET is set, else `mlartifacts/`.

    "Locally" includes MLFLOW_TRACKING_URI naming the embedded store itself: MLflow 3's
    `set_tracking_uri` exports the variable, so after `setup` it is always set in this process
    and its children, and taking that for a server left artifacts in MLflow's `./mlruns`.
    """
    explicit = env.mlflow_artifact_root()
    if explicit:
        return explicit
    uri = env.mlflow_tracking_uri()
    if uri and uri != embedded_tracking_uri(workspace):
        return None
    from core.storage import StorageSettings

    on_s3 = StorageSettings.from_env().mlflow_artifact_root()
    return on_s3 or ((workspace or Path.cwd()).resolve() / "mlartifacts").as_uri()


def setup(workspace: Path | None = None, experiment: str | None = None) -> str:
    """Point mlflow at the store and make sure the experiment exists; returns its id.

    The artifact location is decided before `set_tracking_uri`, which exports MLFLOW_TRACKING_URI.
    """
    import mlflow

    experiment = experiment or env.mlflow_experiment()
    location = artifact_location(workspace)
    mlflow.set_tracking_uri(tracking_uri(workspace))
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    return mlflow.create_experiment(experiment, artifact_location=location)


def flatten(tree: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in tree.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            yield from flatten(value, path)
        else:
            yield path, value


def params_hash(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:12]


def git_commit(cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


# --------------------------------------------------------------------------- the MLflow model
#
# The train stage logs the trained model as an MLflow pyfunc model "from code": MLflow stores a
# three-line file naming `PYFUNC_LOADER`'s EmotionModel (the installed ctxemo's code, pinned by the
# model's requirements and metadata) and the artifacts it reads, and pickles nothing. The model
# is named by module path, the way MLflow's own flavors name their loader modules: the code that
# predicts is the predict pipeline's, above this library.

PYFUNC_LOADER = "pipelines.mlflow_model"
IMAGE_COLUMN = "image"                     # base64-encoded image file bytes (JPEG, PNG, ...)
BOX_COLUMNS = ("x1", "y1", "x2", "y2")     # the person's box in the image's pixels
MODEL_CODE_FILE = "ctxemo_model.py"
MODEL_CODE = f'''"""ctxemo's emotion model for MLflow's models-from-code loader.

The code is the installed ctxemo package ({PYFUNC_LOADER}; its version and git commit are in
the model's metadata); the weights are artifacts/model.pt, read weights-only. Nothing is pickled.
"""
import mlflow

from {PYFUNC_LOADER} import EmotionModel

mlflow.models.set_model(EmotionModel())
'''


def code_version() -> dict[str, str]:
    """The ctxemo package's version and the git commit of its source tree ("unknown" outside a checkout)."""
    from importlib import metadata

    try:
        version = metadata.version("ctxemo")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {"version": version, "git_commit": git_commit(Path(__file__).resolve().parent) or "unknown"}


def pyfunc_signature(classes: list[str]):
    """Inputs: one person a row (`image` base64, `x1..y2` floats); outputs: one float score column per class."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema

    inputs = Schema([ColSpec(DataType.string, IMAGE_COLUMN), *(ColSpec(DataType.double, c) for c in BOX_COLUMNS)])
    return ModelSignature(inputs=inputs, outputs=Schema([ColSpec(DataType.float, c) for c in classes]))


def pyfunc_input_example():
    """One person in a generated 64x48 PNG, so that the example travels with the model."""
    import base64
    import io

    import numpy as np
    import pandas as pd
    from PIL import Image

    y, x = np.mgrid[0:48, 0:64]
    pixels = np.stack([x * 4, y * 5, (x + y) * 2], axis=-1).astype(np.uint8)
    encoded = io.BytesIO()
    Image.fromarray(pixels).save(encoded, format="PNG")
    return pd.DataFrame({IMAGE_COLUMN: [base64.b64encode(encoded.getvalue()).decode("ascii")],
                         "x1": [16.0], "y1": [4.0], "x2": [48.0], "y2": [44.0]})


def log_pyfunc_model(model_file: Path, objects_meta: Path | None = None, name: str = "model"):
    """Log `model_file` (an exported model.pt) to the active run as ctxemo's pyfunc model; returns MLflow's ModelInfo.

    Artifacts: model.pt (state_dict, the model spec with its typed config, classes, task, params) and
    the objects stage's meta.json (the weights that computed the object features), when given.
    """
    import shutil
    import tempfile

    import mlflow
    import torch

    from core import checkpoints

    package = checkpoints.load(model_file, what="model file")
    metadata = {"ctxemo": {**code_version(), "loader": PYFUNC_LOADER, "task": package["task"],
                           "classes": list(package["classes"]), "spec": package["spec"],
                           "input": f"{IMAGE_COLUMN}: base64 image bytes; {', '.join(BOX_COLUMNS)}: person box (px)"}}
    version = metadata["ctxemo"]["version"]
    requirements = [f"torch=={torch.__version__.split('+')[0]}",
                    "ctxemo" if version == "unknown" else f"ctxemo=={version}"]
    with tempfile.TemporaryDirectory() as tmp:
        code = Path(tmp) / MODEL_CODE_FILE
        code.write_text(MODEL_CODE)
        artifacts = {"model": str(model_file)}  # stored under their file names: artifacts/model.pt
        if objects_meta is not None and Path(objects_meta).is_file():
            artifacts["objects_meta"] = str(shutil.copy(objects_meta, Path(tmp) / "objects_meta.json"))
        return mlflow.pyfunc.log_model(name=name, python_model=str(code), artifacts=artifacts,
                                       signature=pyfunc_signature(list(package["classes"])),
                                       input_example=pyfunc_input_example(), metadata=metadata,
                                       pip_requirements=requirements)
