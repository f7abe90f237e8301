"""`ctxemo predict`: emotions of the people in new photos, from the champion model (or any model).

    ctxemo predict photo.jpg                                   # models:/<registry.model_name>@champion
    ctxemo predict photo.jpg --box 40,20,160,230 --annotate out.png
    ctxemo predict a.jpg b.jpg --model artifacts               # a local artifacts/ folder (or artifacts/model)
    ctxemo predict a.jpg --model models:/ctxemo-rrla/3         # a version, an alias, or runs:/<run id>[/model]

A registered model is the pyfunc model the train stage logs (pipelines/mlflow_model.py): MLflow downloads
it (`mlflow.artifacts.download_artifacts`, any URI form MLflow accepts) and the installed code rebuilds it
from its weights-only model.pt as `mlflow.pyfunc.load_model` does, without running the code file stored
with it; thresholds come from its run's evaluation. Any other model (an older ctxemo's pickled
`mlflow.pytorch` module) is refused in one line, never unpickled.

Every number is computed the way training computed it, by the same code:
- people: the given boxes; else for a model that finds people itself (BENet) its own detections
  (`core.bottom_up`); else `core.detection.people.find_people`: the people stage's detector trained on
  the data set's person boxes (data/people/detector.pt, `dvc repro people`) when the workspace has it,
  else a Faster R-CNN person class with local or cached COCO weights, else OpenCV HOG;
- object boxes and features: `core.features.extractor.ObjectFeatureExtractor`, the objects stage's
  per-image path with the weights recorded in its meta.json (logged with the registered model).
  Boxes: with `objects.boxes: detector` the stage's own detector; with dataset boxes (the demo) the
  data set's boxes file for images under `data.root`, else the COCO Faster R-CNN when its weights
  are available, else none (the model then sees no objects, and the output says so);
- the model's pixel views (body, face, image, masked images...): `core.data.dataset.view_tensor` on
  the image decoded by `open_rgb`; face boxes from the detect stage's detector (`detect` params the
  model was trained with), else the documented fallback, said per person in the output;
- scores: `core.inference.predict_loader`, the evaluation stage's scoring loop.
Scores are the model's raw outputs, as in reports/metrics.json; a multi-label class is predicted
when its score reaches the per-class threshold chosen on val by the evaluation stage.
"""
from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.errors import UserError
from core.workspace import Workspace

if TYPE_CHECKING:
    from core.features.extractor import ImageObjects

THRESHOLDS_ARTIFACT = "evaluation/thresholds.json"  # what the evaluation stage logs into the model's run
REREGISTER = ("retrain and register it with this ctxemo (`dvc repro train evaluate`, then `ctxemo promote`): "
              "older versions registered a pickled mlflow.pytorch module, which ctxemo never unpickles")
TOP_OBJECTS = 3
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


# --------------------------------------------------------------------------- the model


@dataclass
class LoadedModel:
    """A model package plus where it came from and the record of its object features."""

    package: Any                          # core.inference.ModelPackage
    source: str
    objects_meta: dict[str, Any] | None   # the objects stage's meta.json the model was trained on
    run_id: str | None = None
    version: str | None = None


def default_model_uri(model_name: str) -> str:
    return f"models:/{model_name}@champion"


def default_model(model_name: str, workspace: Path = Path(".")) -> tuple[str, str | None]:
    """What `ctxemo predict` uses without --model: (spec, notice or None).

    The champion of `model_name` in the MLflow registry; when there is none yet (right after
    `make demo`, which trains and evaluates but registers nothing) the workspace's trained model
    in artifacts/model, with a notice saying so and how to register one.
    """
    from mlflow.exceptions import MlflowException

    from pipelines import registry

    uri = default_model_uri(model_name)
    local = Workspace.at(workspace).model_dir
    try:
        registry.client_for(None, workspace).get_model_version_by_alias(model_name, "champion")
        return uri, None
    except MlflowException:
        if (local / "model.pt").is_file():
            return str(local), (f"no champion of {model_name} in the MLflow registry yet (`ctxemo promote` "
                                f"registers and promotes the trained model); using the workspace's model in {local}")
        return uri, None  # load_model says what is missing


def parse_box(text: str) -> list[float]:
    """'x1,y1,x2,y2' -> four floats with x2 > x1 and y2 > y1."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        box = [float(p) for p in parts]
    except ValueError:
        box = []
    if len(box) != 4 or not all(np.isfinite(box)):
        raise UserError(f"--box {text!r}: expected four numbers x1,y1,x2,y2")
    if box[2] <= box[0] or box[3] <= box[1]:
        raise UserError(f"--box {text!r}: x2 must exceed x1 and y2 must exceed y1")
    return box


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _check_thresholds(package, source: str) -> None:
    if package.thresholds is not None and package.thresholds.ndim == 0:
        package.thresholds = None  # single-label models have none ("thresholds": null reads as a 0-d NaN)
    if package.thresholds is not None and len(package.thresholds) != len(package.classes):
        raise UserError(f"{source}: thresholds.json has {len(package.thresholds)} values for "
                        f"{len(package.classes)} classes")


def load_model(spec: str, workspace: Path = Path(".")) -> LoadedModel:
    """A registry URI (models:/NAME@ALIAS, models:/NAME/VERSION, runs:/ID[/model]) or a local folder.

    A local folder: artifacts/ or artifacts/model/ (holding model.pt), or a downloaded MLflow model.
    """
    from core.inference import load_model_package

    workspace = Path(workspace)
    if spec.startswith(("models:/", "runs:/")):
        return _load_from_mlflow(spec, workspace)
    path = Path(spec)
    if (path / "MLmodel").is_file():
        return from_mlflow_folder(path, spec, objects_meta=_read_json(Workspace.at(workspace).objects_meta))
    if (path / "model.pt").is_file():
        model_dir, thresholds = path, next((p for p in (path / "thresholds.json", path.parent / "thresholds.json")
                                            if p.is_file()), None)
    elif (path / "model" / "model.pt").is_file():
        model_dir, thresholds = path / "model", path / "thresholds.json"
    else:
        raise UserError(f"--model {spec!r}: neither a models:/ or runs:/ URI nor a folder holding model.pt "
                        "(artifacts/ or artifacts/model/) or an MLflow model (MLmodel)")
    package = load_model_package(model_dir, thresholds)
    _check_thresholds(package, spec)
    run = _read_json(model_dir / "mlflow_run.json")
    return LoadedModel(package=package, source=str(path), run_id=run["run_id"] if run else None,
                       objects_meta=_read_json(Workspace.at(workspace).objects_meta))


def mlflow_artifacts(folder: Path, source: str) -> tuple[Any, dict[str, Path]]:
    """(MLflow's Model, {artifact name: local path}) of a downloaded ctxemo pyfunc model; UserError for any other."""
    from mlflow.models import Model

    folder = Path(folder)
    if not (folder / "MLmodel").is_file():
        raise UserError(f"{source}: not an MLflow model (no MLmodel file); {REREGISTER}")
    model = Model.load(str(folder / "MLmodel"))
    pyfunc = model.flavors.get("python_function", {})
    artifacts = pyfunc.get("artifacts") or {}
    if "ctxemo" not in (model.metadata or {}) or "model_code_path" not in pyfunc or "model" not in artifacts:
        raise UserError(f"{source}: not a ctxemo pyfunc model (flavors: {', '.join(sorted(model.flavors))}); "
                        f"{REREGISTER}")
    return model, {name: folder / entry["path"] for name, entry in artifacts.items()}


def from_artifacts(artifacts: dict[str, Any], source: str, thresholds: Path | None = None,
                   objects_meta: dict[str, Any] | None = None) -> LoadedModel:
    """The model a ctxemo pyfunc model's artifacts hold: model.pt read weights-only, its objects record."""
    from core.inference import load_model_package

    model_file = Path(artifacts["model"])
    if model_file.name != "model.pt":
        raise UserError(f"{source}: its model artifact is {model_file.name}, not a ctxemo model.pt")
    package = load_model_package(model_file.parent, thresholds)
    _check_thresholds(package, source)
    if "objects_meta" in artifacts:  # the record the model was trained with, logged with it
        objects_meta = _read_json(Path(artifacts["objects_meta"]))
    return LoadedModel(package=package, source=source, objects_meta=objects_meta)


def from_mlflow_folder(folder: Path, source: str, thresholds: Path | None = None,
                       objects_meta: dict[str, Any] | None = None) -> LoadedModel:
    """A downloaded ctxemo pyfunc model, rebuilt by this code from its artifacts (its code file is not run)."""
    model, artifacts = mlflow_artifacts(folder, source)
    loaded = from_artifacts(artifacts, source, thresholds, objects_meta)
    loaded.run_id = model.run_id
    return loaded


def _load_from_mlflow(spec: str, workspace: Path) -> LoadedModel:
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    from pipelines import registry

    client = registry.client_for(None, workspace)
    uri, version = spec, None
    try:
        if spec.startswith("runs:/"):  # MLflow's own parsing; runs:/ID alone means its logged model
            run_id, path = RunsArtifactRepository.parse_runs_uri(spec)
            uri = spec if path else f"runs:/{run_id}/{registry.MODEL_ARTIFACT}"
        else:
            found = get_model_name_and_version(client, spec)  # (name, version), or (model id,)
            version = str(found[1]) if len(found) == 2 else None
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=f"{tmp}/model",
                                                              tracking_uri=client.tracking_uri,
                                                              registry_uri=client.tracking_uri))
            model, artifacts = mlflow_artifacts(folder, spec)  # refuses any other model before reading it
            thresholds = _run_artifact(client, model.run_id, THRESHOLDS_ARTIFACT, f"{tmp}/run")
            meta_file = _run_artifact(client, model.run_id, registry.OBJECTS_META_ARTIFACT, f"{tmp}/run")
            loaded = from_artifacts(artifacts, spec, thresholds, _read_json(meta_file) if meta_file else None)
    except MlflowException as exc:
        raise UserError(f"--model {spec}: {exc.message} (MLflow store {client.tracking_uri})") from None
    if loaded.objects_meta is None:  # logged with neither the model nor its registration: the workspace's record
        loaded.objects_meta = _read_json(Workspace.at(workspace).objects_meta)
    loaded.run_id, loaded.version = model.run_id, version
    return loaded


def _run_artifact(client, run_id: str | None, path: str, tmp: str) -> Path | None:
    """A file logged into run `run_id`, downloaded into `tmp`; None when there is none (or no run)."""
    from mlflow.exceptions import MlflowException

    if run_id is None:
        return None
    try:
        Path(tmp).mkdir(parents=True, exist_ok=True)
        return Path(client.download_artifacts(run_id, path, tmp))
    except (MlflowException, OSError):
        return None


# --------------------------------------------------------------------------- predictions


@dataclass
class PersonPrediction:
    box: list[float]
    box_source: str
    detection_score: float | None
    scores: np.ndarray                    # [C] raw model outputs (what evaluation scores)
    predicted: list[str] | None           # None: no thresholds known for a multi-label model
    top_objects: list[dict[str, Any]] = field(default_factory=list)
    face: dict[str, Any] | None = None    # models reading a face view: its box and where it came from
    vad: list[float] | None = None        # models predicting valence, arousal, dominance

    def as_dict(self, classes: list[str], thresholds: np.ndarray | None, task: str) -> dict[str, Any]:
        order = np.argsort(-self.scores, kind="stable")
        emotions = []
        for i in order:
            entry = {"label": classes[i], "score": float(self.scores[i])}
            if task == "multilabel" and thresholds is not None:
                # NaN: val had no positive of the class, so no threshold exists and it is never predicted
                entry["threshold"] = float(thresholds[i]) if np.isfinite(thresholds[i]) else None
            emotions.append(entry)
        if task == "multiclass":
            probabilities = np.exp(self.scores - self.scores.max())
            probabilities /= probabilities.sum()
            for entry, i in zip(emotions, order):
                entry["probability"] = float(probabilities[i])
        return {"box": [round(float(v), 2) for v in self.box], "box_source": self.box_source,
                "detection_score": self.detection_score, "predicted": self.predicted, "emotions": emotions,
                "top_objects": self.top_objects, "face": self.face, "vad": self.vad}


@dataclass
class ImagePrediction:
    image: str
    people: list[PersonPrediction]
    people_source: str
    objects_source: str

    def as_dict(self, loaded: LoadedModel) -> dict[str, Any]:
        package = loaded.package
        return {"image": self.image, "model": loaded.source, "model_version": loaded.version,
                "task": package.task, "people_source": self.people_source, "objects_source": self.objects_source,
                "people": [p.as_dict(package.classes, package.thresholds, package.task) for p in self.people]}


class Predictor:
    """One loaded model and its object extractor; `predict(image)` for any number of images.

    `data_set_images=False`: no image is looked up in the data set's boxes file (the MLflow model's
    images come as bytes, staged in temporary files, so none is the data set's own).
    """

    def __init__(self, loaded: LoadedModel, workspace: Path = Path("."), people_score_threshold: float = 0.5,
                 data_set_images: bool = True):
        from core.box_scoring import BoxScorer

        self.loaded = loaded
        params = loaded.package.params
        data_root = Path(params["data"]["root"])
        data_root = data_root if data_root.is_absolute() else Path(workspace) / data_root
        self.scorer = BoxScorer(loaded.package, loaded.objects_meta,
                                data_root if data_set_images and data_root.is_dir() else None)
        objects = params["objects"]
        self.people_weights = objects["weights"] if objects["boxes"] == "detector" else None
        trained = Path(Workspace.at(workspace).people_dir) / "detector.pt"  # the people stage's, when run
        self.people_detector = trained if trained.is_file() else None
        self.people_score_threshold = people_score_threshold

    def find_people(self, rgb: np.ndarray) -> tuple[list[list[float]], list[float | None], str]:
        from core.detection.people import find_people

        found = find_people(rgb, weights=self.people_weights, score_threshold=self.people_score_threshold,
                            trained=self.people_detector)
        return [p[0] for p in found.people], [p[1] for p in found.people], found.detector

    def predict(self, image: str | Path, boxes: Sequence[Sequence[float]] | None = None,
                dataset_boxes=None) -> ImagePrediction:
        from core.data.images import load_rgb

        image = Path(image)
        rgb = load_rgb(image)  # also turns a missing or broken file into a clear error
        if boxes is None and getattr(self.loaded.package.model, "finds_people", False):
            return self._bottom_up(image, rgb)
        if boxes is None:
            boxes, detection_scores, people_source = self.find_people(rgb)
        else:
            detection_scores, people_source = [None] * len(boxes), "given"
        if len(boxes) == 0:
            return ImagePrediction(str(image), [], people_source, "not needed: nobody found")
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).tolist()
        scored = self.scorer.score(image, rgb, boxes, dataset_boxes=dataset_boxes)
        people = []
        for i, box in enumerate(boxes):
            top = ([] if scored.context is None or scored.attention is None else
                   _top_objects(scored.context, i, scored.attention[i], scored.attention.shape[-1]))
            people.append(PersonPrediction(
                box=list(box), box_source=people_source, detection_score=detection_scores[i],
                scores=scored.scores[i], predicted=self._predicted(scored.scores[i]), top_objects=top,
                face=scored.faces[i],
                vad=None if scored.continuous is None else [round(float(v), 3) for v in scored.continuous[i]],
            ))
        return ImagePrediction(str(image), people, people_source, scored.objects_source)

    def _bottom_up(self, image: Path, rgb: np.ndarray) -> ImagePrediction:
        """The people a `finds_people` model detects, with the emotions it reads at their centres (one pass)."""
        from core.bottom_up import bottom_up_people

        source, found = self.loaded.package.model.family, zip(*bottom_up_people(self.loaded.package, rgb))
        people = [PersonPrediction([float(v) for v in box], source, round(float(score), 4), emotions,
                                   self._predicted(emotions)) for box, score, emotions in found]
        return ImagePrediction(str(image), people, source, "not read by this model")

    def _predicted(self, scores: np.ndarray) -> list[str] | None:
        package = self.loaded.package
        if package.task == "multiclass":
            return [package.classes[int(np.argmax(scores))]]
        if package.thresholds is None:
            return None
        return [c for c, s, t in zip(package.classes, scores, package.thresholds) if s >= t]


def _top_objects(context: ImageObjects, person: int, attention: np.ndarray | None, used: int) -> list[dict]:
    """The most attended objects: BOA weights averaged over heads (paper Fig. 10)."""
    if attention is None:
        return []
    found = context.people[person]
    count = min(found.count, used)
    weights = np.asarray(attention, dtype=np.float64).reshape(-1, attention.shape[-1]).mean(axis=0)[:count]
    order = np.argsort(-weights, kind="stable")[:TOP_OBJECTS]
    out = []
    for k in order:
        class_id = int(found.classes[k])
        label = context.class_names[class_id] if 0 <= class_id < len(context.class_names) else "object"
        out.append({"label": label, "weight": round(float(weights[k]), 4),
                    "box": [round(float(v), 2) for v in found.boxes[k]], "detector_score": float(found.scores[k])})
    return out


# --------------------------------------------------------------------------- annotation


PERSON_COLOUR = (230, 30, 30)
OBJECT_COLOUR = (255, 210, 0)


def annotate(image: str | Path, prediction: ImagePrediction, out: Path, classes: Sequence[str]) -> Path:
    """The photo with each person's box and emotions and their top attended objects with BOA weights."""
    from PIL import ImageDraw

    from core.data.dataset import open_rgb

    canvas = open_rgb(Path(image))
    draw = ImageDraw.Draw(canvas)
    line = max(2, round(min(canvas.size) / 160))

    def label(x: float, y: float, text: str, colour: tuple[int, int, int]) -> None:
        left, top, right, bottom = draw.textbbox((0, 0), text)
        x = min(max(0.0, x), max(0.0, canvas.width - (right - left) - 2))  # keep it inside the image
        y = min(max(0.0, y), max(0.0, canvas.height - (bottom - top) - 2))
        draw.rectangle((x - 1, y - 1, x + right - left + 1, y + bottom + 1), fill=(0, 0, 0))
        draw.text((x, y), text, fill=colour)

    for person in prediction.people:  # boxes first, so no box hides a label
        for obj in person.top_objects:
            draw.rectangle(obj["box"], outline=OBJECT_COLOUR, width=max(1, line - 1))
        draw.rectangle(person.box, outline=PERSON_COLOUR, width=line)
    for number, person in enumerate(prediction.people, start=1):
        for obj in person.top_objects:
            label(obj["box"][0] + 2, obj["box"][3] - 12, f"{number}:{obj['label']} {obj['weight']:.2f}", OBJECT_COLOUR)
        order = [classes[i] for i in np.argsort(-person.scores, kind="stable")]
        shown = [c for c in order if c in person.predicted][:3] if person.predicted else order[:3]
        label(person.box[0] + line + 1, person.box[1] + line + 1, f"{number}: " + ", ".join(shown or ["(none)"]),
              (255, 255, 255))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out


# --------------------------------------------------------------------------- entry point


# What a user is told when people were found by the fallback; the figure is from the fault probe of
# issue #19 (three real photographs, one annotated person each).
HOG_NOTICE = ("people were found by OpenCV's HOG detector, the fallback when no Faster R-CNN weights are at hand; "
              "it is weak on real photos (it found the one annotated person in 1 of 3 photographs tried): give the "
              "people's boxes with --box, or make the COCO person detector available (torchvision's "
              "fasterrcnn_resnet50_fpn COCO weights in the torch hub cache, or a local file in objects.weights with "
              "objects.boxes: detector)")


def people_notice(results: Sequence[dict[str, Any]]) -> str | None:
    """The notice to print when any image's people came from the HOG fallback, else None."""
    return HOG_NOTICE if any(r.get("people_source") == "hog" for r in results) else None


def run(images: Sequence[str | Path], model: str, *, boxes: Sequence[Sequence[float]] | None = None,
        annotate_to: Path | None = None, workspace: Path = Path(".")) -> list[dict[str, Any]]:
    """Predict every image; returns the JSON-ready results (and writes annotated copies if asked)."""
    if not images:
        raise UserError("no image given")
    loaded = load_model(model, workspace)
    predictor = Predictor(loaded, workspace)
    results = []
    for image in images:
        prediction = predictor.predict(image, boxes)
        result = prediction.as_dict(loaded)
        if annotate_to is not None:
            target = Path(annotate_to)
            if len(images) > 1 or target.is_dir():
                target = target / f"{Path(image).stem}.annotated.png"
            result["annotated"] = str(annotate(image, prediction, target, loaded.package.classes))
        results.append(result)
    return results
