"""The trained model as an MLflow pyfunc model: what the train stage logs and the registry holds.

    import base64, mlflow, pandas as pd
    model = mlflow.pyfunc.load_model("models:/ctxemo-rrla@champion")
    image = base64.b64encode(open("photo.jpg", "rb").read()).decode()
    scores = model.predict(pd.DataFrame({"image": [image], "x1": [40.0], "y1": [20.0], "x2": [160.0], "y2": [230.0]}))
    # one row per person, one float column per class (model.metadata.get_output_schema())

Input (the signature): one person a row, `image` the base64-encoded bytes of the image file (JPEG, PNG...:
bytes travel to a served model, a path would not) and `x1, y1, x2, y2` the person's box in its pixels.
Output: the model's raw score of every class, the numbers `ctxemo predict` prints for the same image and
box: each row goes through `pipelines.predict.Predictor`, one person per batch as `ctxemo predict --box`
does. An image has no place in the data set here, so its object boxes come from the COCO detector when
its weights are at hand, else there are none (as for `ctxemo predict` on a photo outside the data set).
Thresholds are the evaluation's, logged into the model's run (evaluation/thresholds.json).

Nothing is pickled (MLflow's "models from code", core/tracking.py `log_pyfunc_model`): the model folder
holds MLmodel (signature, input example, requirements and `metadata.ctxemo`: the ctxemo version, the git
commit, the model spec with its typed config, classes and task), code/ctxemo_model.py (three lines naming
EmotionModel below, in the installed ctxemo), artifacts/model.pt (state_dict and spec, read weights-only
by core/checkpoints.py and rebuilt by models.model_from_checkpoint) and artifacts/objects_meta.json (the
weights that computed the object features the model was trained on).
"""
from __future__ import annotations

import base64
import binascii
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from core.errors import UserError
from core.tracking import BOX_COLUMNS, IMAGE_COLUMN
from pipelines.predict import Predictor, from_artifacts


class EmotionModel(mlflow.pyfunc.PythonModel):
    """ctxemo's pyfunc model: a frame of persons (image, box) in, their class scores out."""

    loaded = None       # pipelines.predict.LoadedModel, set by load_context
    _predictor = None

    def load_context(self, context) -> None:
        self.loaded = from_artifacts(context.artifacts, "mlflow pyfunc model")
        self._predictor = None

    @property
    def predictor(self):
        if self._predictor is None:
            self._predictor = Predictor(self.loaded, data_set_images=False)
        return self._predictor

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        missing = [c for c in (IMAGE_COLUMN, *BOX_COLUMNS) if c not in frame.columns]
        if missing:
            raise _invalid(f"missing column(s) {missing}: expected {IMAGE_COLUMN} (base64 image bytes) and "
                           f"{', '.join(BOX_COLUMNS)}")
        classes = list(self.loaded.package.classes)
        scores = np.zeros((len(frame), len(classes)), dtype=np.float32)
        with tempfile.TemporaryDirectory() as tmp:
            staged: dict[str, Path] = {}
            for row, (image, *box) in enumerate(frame[[IMAGE_COLUMN, *BOX_COLUMNS]].itertuples(index=False)):
                if image not in staged:
                    staged[image] = _stage(image, Path(tmp) / f"image{len(staged)}", row)
                scores[row] = self._score(staged[image], _box(box, row), row)
        return pd.DataFrame(scores, columns=classes)

    def _score(self, image: Path, box: list[float], row: int) -> np.ndarray:
        try:
            (person,) = self.predictor.predict(image, [box]).people
        except UserError as exc:  # e.g. bytes that decode to no image
            raise _invalid(f"row {row}: {exc}") from None
        return person.scores


def _stage(encoded: Any, path: Path, row: int) -> Path:
    """The image's bytes in a file, which the decoders read."""
    try:
        data = base64.b64decode(str(encoded), validate=True)
    except (binascii.Error, ValueError):
        raise _invalid(f"row {row}: {IMAGE_COLUMN} is not base64-encoded image bytes") from None
    path.write_bytes(data)
    return path


def _box(values, row: int) -> list[float]:
    box = [float(v) for v in values]
    if not all(np.isfinite(box)) or box[2] <= box[0] or box[3] <= box[1]:
        raise _invalid(f"row {row}: box {box} is not x1 < x2, y1 < y2 numbers")
    return box


def _invalid(message: str):
    from mlflow.exceptions import MlflowException

    return MlflowException.invalid_parameter_value(message)
