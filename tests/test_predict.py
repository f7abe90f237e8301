"""`ctxemo predict` and `predict-batch` from the registry's champion: the same numbers as the evaluation path.

One tiny model is trained (Ray Train), evaluated and registered as champion for the module; every
prediction is then compared with what `stages.evaluate.score_split` gives the same person from the
stored object features. Batch size changes the model's float rounding (oneDNN picks other kernels),
so the reference scores one person per batch, as predict does for a one-person image.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from support import use_mlflow_store

from core.data.manifest import read_manifest
from core.errors import UserError
from core.evaluation import evaluate
from core.params import apply_overrides, params_from_dict
from core.training import trainer
from pipelines import predict, registry

MODEL_NAME = "ctxemo-predict-test"


@pytest.fixture(scope="module")
def champion(tiny_workspace, ray_local, tmp_path_factory):
    """A trained, evaluated model registered as champion; the MLflow store is the module's own."""
    store = tmp_path_factory.mktemp("predict-mlflow")
    with pytest.MonkeyPatch.context() as patch:
        use_mlflow_store(patch, store)
        params = params_from_dict(apply_overrides(tiny_workspace.params_dict, {"train.epochs": 1}))
        paths = tiny_workspace.train_paths("predict")
        trainer.run(params, paths)
        run_dir = Path(paths.model_dir).parent
        eval_paths = layout = paths
        evaluate.run(eval_paths, batch_size=params.train.batch_size)
        assert json.loads(Path(eval_paths.metrics_file).read_text())["model"] == params.model.name == "rrla"
        promoted = registry.register_and_promote(tiny_workspace.root, MODEL_NAME, 0.005, layout=layout)
        assert promoted.decision.applied
        yield {"uri": f"models:/{MODEL_NAME}@champion", "artifacts": run_dir, "eval_paths": eval_paths,
               "workspace": tiny_workspace.root, "layout": layout, "version": promoted.registered_version}


@pytest.fixture(scope="module")
def reference(champion):
    """Scores of every test person through the evaluation path, one person per batch."""
    from core.inference import load_model_package

    package = load_model_package(champion["artifacts"] / "model", champion["artifacts"] / "thresholds.json")
    assert package.model_name == "rrla"
    scores = evaluate.score_split(package, champion["eval_paths"], "test", batch_size=1).scores
    manifest = read_manifest("test", champion["eval_paths"].manifest_dir)
    return package, manifest, scores


@pytest.fixture(scope="module")
def predictor(champion):
    loaded = predict.load_model(champion["uri"], champion["workspace"])
    return predict.Predictor(loaded, champion["workspace"])


def test_predict_from_the_champion_gives_the_evaluation_paths_numbers(champion, reference, predictor):
    package, manifest, scores = reference
    loaded = predictor.loaded
    assert loaded.version == champion["version"] and loaded.package.classes == package.classes
    assert np.array_equal(loaded.package.thresholds, package.thresholds, equal_nan=True)
    assert loaded.objects_meta["weights"]["source"] == "random"  # the record logged at registration
    data_root = champion["eval_paths"].data_root
    for i, row in manifest.iterrows():
        result = predictor.predict(data_root / row["image_path"], [row["person_box"]])
        assert result.objects_source == "data set boxes (object_boxes.csv)"
        (person,) = result.people
        np.testing.assert_array_equal(person.scores, scores[i])
        expected = [c for c, s, t in zip(package.classes, scores[i], package.thresholds) if s >= t]
        assert person.predicted == expected


def test_a_local_artifacts_folder_gives_the_same_predictions_as_the_registry(champion, reference, predictor):
    _, manifest, scores = reference
    local = predict.Predictor(predict.load_model(str(champion["artifacts"]), champion["workspace"]),
                              champion["workspace"])
    row = manifest.iloc[0]
    image = champion["eval_paths"].data_root / row["image_path"]
    assert np.array_equal(local.predict(image, [row["person_box"]]).people[0].scores, scores[0])


def test_the_top_objects_are_the_ones_boa_attends_to_most(champion, reference, predictor):
    from torch.utils.data import DataLoader

    from core.data.person_inputs import split_dataset
    from core.inference import predict_loader

    package, manifest, _ = reference
    paths = champion["eval_paths"]
    dataset = split_dataset(package.model, "test", paths, kind=package.params["data"]["kind"], manifest=manifest)
    _, _, attention = predict_loader(package.model, DataLoader(dataset, batch_size=1), with_attention=True)
    counts = np.load(paths.objects_dir / "test" / "counts.npy")[dataset.object_rows]
    i = int(np.argmax(counts))  # the person with the most objects
    row = manifest.iloc[i]
    person = predictor.predict(paths.data_root / row["image_path"], [row["person_box"]]).people[0]
    weights = attention[i].mean(axis=0)[: counts[i]]
    top = np.argsort(-weights, kind="stable")[: predict.TOP_OBJECTS]
    _, boxes, _ = dataset.store.get(int(dataset.object_rows[i]))
    assert len(person.top_objects) == min(predict.TOP_OBJECTS, counts[i]) > 0
    assert [o["box"] for o in person.top_objects] == [[round(float(v), 2) for v in boxes[k]] for k in top]
    assert [o["weight"] for o in person.top_objects] == [round(float(weights[k]), 4) for k in top]
    assert all(o["label"] in dataset.store.classes for o in person.top_objects)


def test_people_are_detected_when_no_box_is_given(champion, predictor):
    from core.data.images import load_rgb
    from core.detection.people import find_people

    manifest = read_manifest("test", champion["eval_paths"].manifest_dir)
    image = champion["eval_paths"].data_root / manifest.iloc[0]["image_path"]
    # the workspace ran the people stage: its detector, trained on the data set's boxes, finds them
    assert predictor.people_detector == Path(champion["eval_paths"].people_dir) / "detector.pt"
    found = find_people(load_rgb(image), trained=predictor.people_detector)
    assert "trained by the people stage" in found.detector
    result = predictor.predict(image)
    assert result.people_source == found.detector
    assert [p.box for p in result.people] == [np.float32(b).tolist() for b, _ in found.people]
    assert [p.detection_score for p in result.people] == [s for _, s in found.people]
    if found.people:  # the detected boxes go through the very same path as given ones
        given = predictor.predict(image, [b for b, _ in found.people])
        for detected, explicit in zip(result.people, given.people):
            np.testing.assert_array_equal(detected.scores, explicit.scores)


def test_predict_command_prints_json_and_draws_the_annotated_image(champion, reference, tmp_path, monkeypatch):
    from PIL import Image
    from typer.testing import CliRunner

    from pipelines.cli import app

    _, manifest, scores = reference
    row = manifest.iloc[1]
    image = champion["eval_paths"].data_root / row["image_path"]
    box = ",".join(str(float(v)) for v in row["person_box"])
    monkeypatch.chdir(champion["workspace"])
    out = tmp_path / "annotated.png"
    done = CliRunner().invoke(app, ["predict", str(image), "--box", box, "--model", champion["uri"],
                                    "--annotate", str(out)])
    assert done.exit_code == 0, done.output
    result = json.loads(done.stdout)
    (person,) = result["people"]
    by_label = {e["label"]: e["score"] for e in person["emotions"]}
    assert [by_label[c] for c in reference[0].classes] == pytest.approx(scores[1].tolist(), rel=1e-6)
    assert [e["score"] for e in person["emotions"]] == sorted(by_label.values(), reverse=True)
    assert result["model_version"] == champion["version"] and result["people_source"] == "given"
    assert person["face"] is None and person["vad"] is None  # rrla on EMOTIC reads no face, predicts no VAD

    drawn = np.asarray(Image.open(out).convert("RGB"))
    original = np.asarray(Image.open(image).convert("RGB"))
    assert drawn.shape == original.shape
    x1, y1, x2, y2 = (int(round(v)) for v in row["person_box"])
    assert tuple(drawn[(y1 + y2) // 2, x1]) == predict.PERSON_COLOUR  # the person's box outline
    assert tuple(drawn[(y1 + y2) // 2, x2 - 1]) == predict.PERSON_COLOUR

    bad = CliRunner().invoke(app, ["predict", str(image), "--box", "1,2,3", "--model", champion["uri"]])
    assert bad.exit_code == 2 and "expected four numbers x1,y1,x2,y2" in bad.output
    missing = CliRunner().invoke(app, ["predict", str(image), "--model", "models:/no-such-model@champion"])
    assert missing.exit_code == 2 and "no-such-model" in missing.output


def _encoded(image: Path) -> str:
    import base64

    return base64.b64encode(Path(image).read_bytes()).decode("ascii")


def test_the_champion_loads_with_mlflows_own_api_and_holds_no_pickled_module(champion, reference, tmp_path):
    """#16 item 6: a pyfunc model by alias, with a signature, an input example and the code's version."""
    import mlflow
    from mlflow.models import Model

    from core import tracking
    from pipelines.mlflow_model import EmotionModel

    classes = reference[0].classes
    model = mlflow.pyfunc.load_model(champion["uri"])
    assert isinstance(model.unwrap_python_model(), EmotionModel)
    signature = model.metadata.signature
    assert signature.inputs.input_names() == ["image", "x1", "y1", "x2", "y2"]
    assert [str(t) for t in signature.inputs.input_types()] == ["DataType.string"] + ["DataType.double"] * 4
    assert signature.outputs.input_names() == classes
    info = model.metadata.metadata["ctxemo"]
    assert info["version"] == tracking.code_version()["version"] != "unknown"
    assert info["git_commit"] == tracking.git_commit(Path(__file__).resolve().parent)
    assert info["spec"]["name"] == "rrla" and info["spec"]["config"] and info["classes"] == classes

    folder = Path(mlflow.artifacts.download_artifacts(champion["uri"], dst_path=str(tmp_path / "model")))
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert "python_model.pkl" not in files and set(Model.load(str(folder)).flavors) == {"python_function"}
    binary = []
    for name in files:
        try:
            (folder / name).read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            binary.append(name)
    assert binary == ["artifacts/model.pt"]  # everything else is text: MLmodel, code, requirements, examples
    state = torch.load(folder / "artifacts" / "model.pt", weights_only=True)  # tensors and plain values only
    assert set(state) >= {"spec", "state_dict", "classes", "task", "params"}
    assert all(isinstance(v, torch.Tensor) for v in state["state_dict"].values())
    assert json.loads((folder / "artifacts" / "objects_meta.json").read_text())["weights"]["source"] == "random"

    example = Model.load(str(folder)).load_input_example(str(folder))
    assert list(example.columns) == ["image", "x1", "y1", "x2", "y2"] and len(example) == 1
    out = model.predict(example)
    assert list(out.columns) == classes and out.shape == (1, len(classes)) and np.isfinite(out.to_numpy()).all()


def test_the_pyfunc_model_gives_the_scores_ctxemo_predict_prints(champion, reference, tmp_path, monkeypatch):
    import shutil

    import mlflow
    import pandas as pd
    from mlflow.exceptions import MlflowException
    from typer.testing import CliRunner

    from core import tracking
    from pipelines.cli import app

    classes = reference[0].classes
    _, manifest, _ = reference
    rows = [manifest.iloc[0], manifest.iloc[1]]
    images = []
    for i, row in enumerate(rows):  # photos outside the data set: bytes have no place in it
        images.append(tmp_path / f"photo{i}{Path(row['image_path']).suffix}")
        shutil.copy(champion["eval_paths"].data_root / row["image_path"], images[-1])
    model = mlflow.pyfunc.load_model(champion["uri"])
    frame = pd.DataFrame({"image": [_encoded(p) for p in images],
                          **{c: [float(r["person_box"][k]) for r in rows] for k, c in enumerate(tracking.BOX_COLUMNS)}})
    out = model.predict(frame)
    monkeypatch.chdir(champion["workspace"])
    for i, row in enumerate(rows):
        done = CliRunner().invoke(app, ["predict", str(images[i]), "--model", champion["uri"],
                                        "--box", ",".join(str(float(v)) for v in row["person_box"])])
        assert done.exit_code == 0, done.output
        (person,) = json.loads(done.stdout)["people"]
        by_label = {e["label"]: e["score"] for e in person["emotions"]}
        np.testing.assert_allclose(out.loc[i, classes].to_numpy(np.float64), [by_label[c] for c in classes],
                                   rtol=1e-6, atol=1e-7)

    # a downloaded model folder is a --model too, with the same numbers
    folder = mlflow.artifacts.download_artifacts(champion["uri"], dst_path=str(tmp_path / "model"))
    local = predict.Predictor(predict.load_model(folder, champion["workspace"]), data_set_images=False)
    np.testing.assert_allclose(local.predict(images[0], [rows[0]["person_box"]]).people[0].scores,
                               out.loc[0, classes].to_numpy(np.float32), rtol=1e-6)
    # the training run's logged model, by run: the same network, and no version
    run_id = json.loads((Path(champion["artifacts"]) / "model" / "mlflow_run.json").read_text())["run_id"]
    by_run = predict.load_model(f"runs:/{run_id}", champion["workspace"])
    assert by_run.run_id == run_id and by_run.version is None and by_run.package.thresholds is not None
    network = mlflow.pyfunc.load_model(f"runs:/{run_id}/model").unwrap_python_model().loaded.package.model
    for name, tensor in network.state_dict().items():
        assert torch.equal(tensor, by_run.package.model.state_dict()[name])
    with pytest.raises(MlflowException, match="row 0: image is not base64-encoded image bytes"):
        model.predict(frame.assign(image="not an image!"))
    with pytest.raises(MlflowException, match=r"row 1: box \[.*\] is not x1 < x2"):
        model.predict(frame.assign(x2=[frame["x2"][0], 0.0]))


def test_batch_prediction_writes_the_same_per_person_numbers_to_parquet(champion, reference, tmp_path):
    from pipelines import batch_predict

    _, manifest, _ = reference
    data_root = champion["eval_paths"].data_root
    images = sorted(set(manifest["image_path"]))[:2]
    boxes_csv = tmp_path / "boxes.csv"
    rows = [(p, *map(float, b)) for p, b in zip(manifest["image_path"], manifest["person_box"]) if p in images]
    src = data_root / "images"
    boxes_csv.write_text("image,x1,y1,x2,y2\n" + "".join(  # image paths relative to SRC
        f"{Path(p).relative_to('images').as_posix()},{a},{b},{c},{d}\n" for p, a, b, c, d in rows))
    out = tmp_path / "predictions"

    summary = batch_predict.run(str(src), str(out), champion["uri"], workspace=champion["workspace"],
                                boxes_file=boxes_csv, batch_size=4)

    written = sorted(out.glob("*.parquet"))
    assert len(written) >= 2, "the actors write a file per block, not the driver one file"
    table = pq.read_table(out)
    assert all(json.loads(pq.read_schema(f).metadata[b"ctxemo.classes"]) == reference[0].classes for f in written)
    assert table.schema.field("top_objects").type == batch_predict.SCHEMA.field("top_objects").type
    frame = table.to_pandas()
    assert summary["images"] == len(list(src.iterdir())) == frame["image"].nunique()
    assert summary["people"] == int((frame["status"] == "ok").sum())
    assert set(frame["status"]) <= {"ok", "no_person"}
    # the actors compute with one torch thread, as the objects stage's Ray actors do
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = predict.Predictor(predict.load_model(champion["uri"], champion["workspace"]), champion["workspace"])
        for relative in images:
            image_rows = frame[frame["image"] == Path(relative).relative_to("images").as_posix()]
            boxes = [list(r[1:]) for r in rows if r[0] == relative]
            expected = single.predict(data_root / relative, boxes)
            assert len(image_rows) == len(boxes) and (image_rows["box_source"] == "given").all()
            for (_, got), want in zip(image_rows.sort_values("person").iterrows(), expected.people):
                np.testing.assert_array_equal(np.asarray(got["scores"], np.float32), want.scores)
                assert list(got["predicted"]) == want.predicted
                assert [{**o, "box": list(o["box"])} for o in got["top_objects"]] == want.top_objects
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(UserError, match="already holds files.*--overwrite"):
        batch_predict.run(str(src), str(out), champion["uri"], workspace=champion["workspace"])


def test_rescoring_the_champion_on_the_workspace_reproduces_its_evaluation(champion, tiny_workspace, tmp_path):
    import dataclasses

    import yaml

    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(tiny_workspace.params_dict))
    layout = dataclasses.replace(champion["layout"], params_file=params_file)
    client = registry.client_for()
    version = client.get_model_version(MODEL_NAME, champion["version"])
    metrics = json.loads(layout.metrics_file.read_text())
    assert registry.rescore_version(client, version, layout, "mAP") == metrics["mAP"]


def test_photos_outside_the_data_set_get_no_object_boxes_and_an_empty_photo_finds_nobody(
        champion, reference, predictor, tmp_path):
    import shutil

    from PIL import Image

    _, manifest, scores = reference
    row = manifest.iloc[0]
    outside = tmp_path / "photo.jpg"
    shutil.copy(champion["eval_paths"].data_root / row["image_path"], outside)
    result = predictor.predict(outside, [row["person_box"]])
    # offline there are no detector weights: the model sees no objects, and the output says so
    assert result.objects_source.startswith("none:") and result.people[0].top_objects == []
    assert result.people[0].scores.shape == scores[0].shape and not np.array_equal(result.people[0].scores, scores[0])

    blank = tmp_path / "blank.png"
    Image.new("RGB", (48, 48), (90, 90, 90)).save(blank)
    nobody = predictor.predict(blank)
    assert nobody.people == [] and nobody.objects_source == "not needed: nobody found"


def test_without_a_champion_predict_uses_the_workspace_model_and_says_so(champion, reference, tmp_path,
                                                                         monkeypatch):
    """Right after `make demo` nothing is registered: predict falls back to artifacts/model, with a notice."""
    import shutil

    import yaml
    from typer.testing import CliRunner

    from pipelines.cli import app

    root = champion["workspace"]
    assert predict.default_model(MODEL_NAME, root) == (champion["uri"], None)  # the champion when there is one

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'empty.db'}")  # a registry without it
    local = root / "artifacts" / "model"
    assert predict.default_model(MODEL_NAME, root) == (champion["uri"], None)  # nothing local either
    shutil.copytree(champion["artifacts"] / "model", local)
    shutil.copy(champion["artifacts"] / "thresholds.json", root / "artifacts" / "thresholds.json")
    spec, notice = predict.default_model(MODEL_NAME, root)
    assert spec == str(local) and f"no champion of {MODEL_NAME}" in notice and "ctxemo promote" in notice

    params = yaml.safe_load(yaml.safe_dump(reference[0].params))  # the params the model was trained with
    params["registry"]["model_name"] = MODEL_NAME
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    _, manifest, scores = reference
    row = manifest.iloc[1]
    monkeypatch.chdir(root)
    done = CliRunner().invoke(app, ["predict", str(champion["eval_paths"].data_root / row["image_path"]),
                                    "--box", ",".join(str(float(v)) for v in row["person_box"])])
    assert done.exit_code == 0, done.output
    assert f"no champion of {MODEL_NAME}" in done.stderr
    (person,) = json.loads(done.stdout)["people"]
    by_label = {e["label"]: e["score"] for e in person["emotions"]}
    assert [by_label[c] for c in reference[0].classes] == pytest.approx(scores[1].tolist(), rel=1e-6)
    shutil.rmtree(root / "artifacts")
    (root / "params.yaml").unlink()


def test_the_gate_holds_both_models_to_the_test_data_as_it_is_now(champion, tiny_workspace, tmp_path):
    # #18 item 3: the test split changed by hand (`ctxemo stage ...`), dvc.lock untouched. The gate
    # must not compare the champion's recorded metric with one computed on other persons.
    import dataclasses
    import shutil

    import yaml

    from core.inference import load_model_package

    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(tiny_workspace.params_dict))
    layout = dataclasses.replace(champion["layout"], params_file=params_file)
    client = registry.client_for()
    recorded = json.loads(layout.metrics_file.read_text())
    champion_version = client.get_model_version(MODEL_NAME, champion["version"])
    assert recorded["test_data_version"] == champion_version.tags["data_version"] == registry.current_data_version(layout)

    manifest_dir = tmp_path / "manifest"
    shutil.copytree(layout.manifest_dir, manifest_dir)
    test_split = pq.read_table(manifest_dir / "test.parquet")
    pq.write_table(test_split.slice(0, test_split.num_rows // 2), manifest_dir / "test.parquet")
    changed = layout.moved(manifest_dir=manifest_dir)
    now = registry.current_data_version(changed)
    assert now not in (None, recorded["test_data_version"])

    # a challenger evaluated on the data as it is now: the champion is re-scored on the same persons
    package = load_model_package(Path(champion["artifacts"]) / "model")
    on_new_data = evaluate.evaluate_model(package, changed, batch_size=8)[0]["mAP"]
    assert on_new_data != recorded["mAP"]
    challenger = registry.Candidate(version=None, run_id="another-run", value=0.5, data_version=now)
    decision = registry.decide(client, MODEL_NAME, challenger, "mAP", 0.005, changed)
    assert decision.champion_value == pytest.approx(on_new_data, abs=1e-12)
    assert decision.delta == pytest.approx(0.5 - on_new_data, abs=1e-12)
    assert f"test data {now}" in decision.basis and "champion re-scored on it" in decision.basis

    # the workspace's own evaluation, older than the data: refused before anything is registered, with
    # a command that re-evaluates whatever DVC thinks
    stale = registry.Candidate(version=None, run_id="another-run", value=0.5, data_version=recorded["test_data_version"])
    with pytest.raises(UserError, match=r"re-evaluate the model with `ctxemo stage evaluate"):
        registry.decide(client, MODEL_NAME, stale, "mAP", 0.005, changed)
    versions = len(client.search_model_versions(f"name='{MODEL_NAME}'"))
    with pytest.raises(UserError, match=r"was computed on test data .* not on the workspace's test data now"):
        registry.register_and_promote(tiny_workspace.root, MODEL_NAME, 0.005, layout=changed)
    assert len(client.search_model_versions(f"name='{MODEL_NAME}'")) == versions


def test_the_evaluation_logs_into_the_finished_training_run_without_reopening_it(champion):
    # re-opening it with start_run would mark it RUNNING, and a killed evaluation would leave it so
    run_id = json.loads((Path(champion["artifacts"]) / "model" / "mlflow_run.json").read_text())["run_id"]
    run = registry.client_for().get_run(run_id)
    assert run.info.status == "FINISHED"
    metrics = json.loads(champion["layout"].metrics_file.read_text())
    assert run.data.metrics["test_mAP"] == metrics["mAP"]
    artifacts = {a.path for a in registry.client_for().list_artifacts(run_id, "evaluation")}
    assert {"evaluation/metrics.json", "evaluation/metrics_per_class.json", "evaluation/thresholds.json"} <= artifacts
