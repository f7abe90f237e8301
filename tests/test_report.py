"""`ctxemo report`: the page, its figures and its numbers, checked against the evaluation and by hand.

One tiny rrla model is trained (Ray Train, 1 epoch), evaluated and reported for the module, with
stand-in comparison, ablation and sweep reports (one of them carrying HTML in a name) beside it.
The numbers the page prints are recomputed independently: the metrics from reports' metrics.json,
the PR curves with sklearn, BOA's and BPA's top three and the scores without ELD from the model's
own modules on the same batch of persons.
"""
from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from support import use_mlflow_store

from core.evaluation import evaluate
from core.params import apply_overrides, params_from_dict
from core.training import trainer
from pipelines import report
from pipelines.report import collect

PERSONS = 4
EVIL = "<b>kosti & co</b>"  # a model name in compare.json: must be escaped, never markup


def _stand_in_tables(reports_dir: Path) -> None:
    reports_dir.mkdir(parents=True)
    (reports_dir / "compare.json").write_text(json.dumps({"dataset": "emotic", "seed": 0, "rows": [
        {"model": EVIL, "metric": "mAP", "test": 0.25, "baseline": 0.14, "beats_baseline": True,
         "parameters": 22_620_000, "train_samples_per_s": 41.9, "inference_ms_per_person": 8.2}]}))
    (reports_dir / "ablations.json").write_text(json.dumps({"rows": [
        {"variant": "full", "seeds": 1, "test_mAP": 0.31, "val_mAP": 0.3, "delta_vs_full": 0.0},
        {"variant": "no_eld", "seeds": 1, "test_mAP": 0.29, "val_mAP": 0.28, "delta_vs_full": -0.02,
         "full_better_on": "1/1"}]}))
    (reports_dir / "sweep.json").write_text(json.dumps({
        "name": "sweep-x", "metric": "val_map", "space": {"train.lr": {"loguniform": [0.001, 0.1]}},
        "rows": [{"trial_id": f"t{i}", "train.lr": 0.01 * (i + 1), "best_val_metric": 0.1 * i, "status": "completed"}
                 for i in range(7)]}))


@pytest.fixture(scope="module")
def reported(tiny_workspace, ray_local, tmp_path_factory):
    """A trained and evaluated tiny model, its report and the MLflow store it was logged to."""
    store = tmp_path_factory.mktemp("report-mlflow")
    with pytest.MonkeyPatch.context() as patch:
        uri = use_mlflow_store(patch, store)
        params = params_from_dict(apply_overrides(tiny_workspace.params_dict, {"train.epochs": 1}))
        paths = tiny_workspace.train_paths("report")
        paths = paths.moved(reports_dir=Path(paths.model_dir).parent / "tables")
        trainer.run(params, paths)
        evaluate.run(paths, batch_size=params.train.batch_size)
        _stand_in_tables(paths.reports_dir)
        out = tmp_path_factory.mktemp("report") / "report"
        index = report.run(paths, out, persons=PERSONS, seed=0)
        package = report.load_package(paths)
        yield {"paths": paths, "out": out, "index": index, "uri": uri, "package": package,
               "data": json.loads((out / "data.json").read_text()),
               "metrics": json.loads(Path(paths.metrics_file).read_text()),
               "batch_size": params.train.batch_size}


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.links, self.cells, self.text = [], [], [], []
        self._cell = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        self.links += [(tag, key, attrs[key]) for key in ("src", "href") if key in attrs]
        if tag == "td":
            self._cell = [attrs.get("data-value"), ""]

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.cells.append(tuple(self._cell))
            self._cell = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell[1] += data


def _page(index: Path) -> _Page:
    parser = _Page()
    parser.feed(index.read_text(encoding="utf-8"))
    parser.close()
    return parser


def test_the_folder_is_self_contained_and_every_image_is_a_png_in_it(reported):
    from PIL import Image

    source = reported["index"].read_text(encoding="utf-8")
    page = _page(reported["index"])
    images = [value for tag, key, value in page.links if tag == "img"]
    assert len(images) >= 3 + 2 * PERSONS  # AP bars, PR curves, co-occurrence; each person's image and heat maps
    for tag, key, value in page.links:
        assert not value.lower().startswith(("http://", "https://", "//")), (tag, key, value)
    for src in images:
        if src.startswith("data:"):
            continue
        path = reported["out"] / src
        assert not Path(src).is_absolute() and path.resolve().parent == reported["out"].resolve() and path.is_file()
        with Image.open(path) as png:
            assert png.format == "PNG" and png.width > 0 and png.height > 0
    assert not {"script", "link", "iframe"} & set(page.tags) and "url(" not in source and "@import" not in source
    # data from the workspace is escaped: the model name of compare.json is text, not markup
    assert EVIL in "".join(page.text) and "<b>kosti" not in source and "&lt;b&gt;kosti &amp; co&lt;/b&gt;" in source


def test_the_metrics_table_shows_the_evaluations_exact_map(reported):
    page = _page(reported["index"])
    value, text = page.cells[page.cells.index((None, "test mAP")) + 1]
    assert float(value) == reported["metrics"]["mAP"] and text == f"{reported['metrics']['mAP']:.4f}"
    # scored again through the evaluation's own path and batch size: the same mAP, to the last digit
    assert reported["data"]["rescored"] == reported["metrics"]["mAP"]
    assert reported["data"]["metrics"] == reported["metrics"]


def test_the_pr_curves_are_sklearns_on_the_test_scores(reported):
    from sklearn.metrics import precision_recall_curve

    test = evaluate.score_split(reported["package"], reported["paths"], "test", reported["batch_size"])
    stored = np.load(reported["out"] / "pr_curves.npz")
    classes = list(stored["classes"])
    assert classes == reported["package"].classes
    with_positives = [i for i in range(len(classes)) if test.targets[:, i].sum() > 0]
    assert sorted(int(k.split("_")[1]) for k in stored.files if k.startswith("precision_")) == with_positives
    for i in with_positives:
        precision, recall, thresholds = precision_recall_curve(test.targets[:, i], test.scores[:, i])
        np.testing.assert_array_equal(stored[f"precision_{i}"], precision)
        np.testing.assert_array_equal(stored[f"recall_{i}"], recall)
        np.testing.assert_array_equal(stored[f"thresholds_{i}"], thresholds)


def test_person_quality_and_the_choice_of_persons_by_hand():
    targets = np.array([[1, 0, 1], [0, 1, 0]])
    scores = np.array([[0.9, 0.8, 0.1], [0.3, 0.2, 0.1]])
    # person 0: true labels ranked 1st and 3rd -> (1/1 + 2/3) / 2; person 1: its one label ranked 2nd -> 1/2
    np.testing.assert_allclose(collect.person_quality("multilabel", targets, scores), [5 / 6, 0.5])
    probability = np.exp(0.2) / np.exp([0.3, 0.2, 0.1]).sum()
    np.testing.assert_allclose(collect.person_quality("multiclass", np.array([2, 1]), scores)[1], probability)

    quality = np.array([0.5, 0.9, 0.1, np.nan, 0.7, 0.3, 0.9, 0.1])
    chosen = collect.choose_persons(quality, 5, seed=3)
    assert chosen[:2] == [(1, "best"), (2, "worst")]  # the first of tied maxima and minima
    drawn = [row for row, why in chosen[2:]]
    assert all(why == "drawn" for _, why in chosen[2:]) and len(set(drawn)) == 3 and not {1, 2} & set(drawn)
    expected = [int(r) for r in np.random.default_rng(3).permutation(8) if r not in (1, 2)][:3]
    assert drawn == expected and collect.choose_persons(quality, 5, seed=3) == chosen
    assert collect.choose_persons(quality, 5, seed=4) != chosen
    assert len(collect.choose_persons(quality, 50, seed=0)) == 8  # no more than the split holds


def test_the_reported_persons_are_the_best_the_worst_and_the_seeds(reported):
    test = evaluate.score_split(reported["package"], reported["paths"], "test", reported["batch_size"])
    quality = collect.person_quality("multilabel", test.targets, test.scores)
    persons = reported["data"]["persons"]
    assert [p["why"] for p in persons[:2]] == ["best", "worst"] and len(persons) == min(PERSONS, len(quality))
    assert persons[0]["row"] == int(np.nanargmax(quality)) and persons[1]["row"] == int(np.nanargmin(quality))
    assert [(p["row"], p["why"]) for p in persons] == collect.choose_persons(quality, PERSONS, seed=0)
    classes = reported["package"].classes
    for person in persons:
        truth = {classes[i] for i in np.flatnonzero(test.targets[person["row"]])}
        assert set(person["truth"]) == truth
        assert [e["true"] for e in person["with_eld"]] == [e["label"] in truth for e in person["with_eld"]]


def _forward_chosen(reported):
    """The chosen persons as one batch (the report's own batch), through the model's modules by hand."""
    from core.data.dataset import model_inputs
    from core.data.person_inputs import split_dataset

    package, paths = reported["package"], reported["paths"]
    model = package.model
    dataset = split_dataset(model, "test", paths, kind=package.params["data"]["kind"])
    rows = [p["row"] for p in reported["data"]["persons"]]
    batch = {key: torch.stack([dataset[r][key] for r in rows]) for key in dataset[rows[0]]}
    inputs = model_inputs(model, batch)
    with torch.no_grad():
        out = model(inputs)
        feature_map = model.backbone(inputs["body"])
        gates = model.bpa.gates(feature_map)
        fused, _ = model.fused_feature(inputs)
    return dataset, rows, out, gates.numpy(), fused


def test_boa_top_three_are_the_largest_head_averaged_weights(reported):
    dataset, rows, out, _, _ = _forward_chosen(reported)
    for person, row, attention in zip(reported["data"]["persons"], rows, out.attention.numpy()):
        mask = dataset.store.get(int(dataset.object_rows[row]))[2]
        weights = attention.mean(axis=0)
        valid = np.flatnonzero(mask[: weights.size])
        top = valid[np.argsort(-weights[valid], kind="stable")][:3]
        assert [o["index"] for o in person["top_objects"]] == top.tolist()
        assert [o["weight"] for o in person["top_objects"]] == [round(float(weights[j]), 4) for j in top]
        assert all(weights[j] <= min(weights[top]) + 1e-12 for j in set(valid) - set(top))
    # padding never makes the list, whatever weight it carries
    attention = np.array([[0.1, 0.7, 0.2, 0.9], [0.3, 0.1, 0.4, 0.9]])  # [h,N]: averaged 0.2, 0.4, 0.3, (0.9)
    listed = collect.top_objects(attention, np.zeros((4, 4)), np.array([True, True, True, False]),
                                 np.array([0, 1, 2, -1]), ["a", "b", "c"])
    assert [(o["label"], o["weight"], o["index"]) for o in listed] == [("b", 0.4, 1), ("c", 0.3, 2), ("a", 0.2, 0)]


def test_bpa_top_three_are_the_largest_gates(reported):
    _, _, _, gates, _ = _forward_chosen(reported)
    for person, person_gates in zip(reported["data"]["persons"], gates):
        channels = [c["channel"] for c in person["top_channels"]]
        assert channels == np.argsort(-person_gates, kind="stable")[:3].tolist()
        np.testing.assert_allclose([c["gate"] for c in person["top_channels"]], person_gates[channels], rtol=1e-5)
    assert (reported["out"] / "channels_1.png").is_file()


def test_without_eld_is_the_identity_adjacency_on_the_same_features(reported):
    _, _, out, _, fused = _forward_chosen(reported)
    eld = reported["package"].model.eld
    # by hand: each class's classifier from its own label embedding, σ(Z W0) W1 (between_layers), eq. 8's scale
    with torch.no_grad():
        hidden = torch.nn.functional.leaky_relu(eld.label_embeddings @ eld.gcn1.weight.T, 0.2)
        expected = (fused @ (hidden @ eld.gcn2.weight.T).T / 4096 ** 0.5).numpy()
    persons = reported["data"]["persons"]
    np.testing.assert_allclose([p["scores_without_eld"] for p in persons], expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose([p["scores"] for p in persons], out.logits.numpy(), rtol=1e-4, atol=1e-6)
    graph_mixes = not torch.equal(eld.propagation_matrix(), torch.eye(eld.num_classes))
    assert graph_mixes and not np.allclose(expected, out.logits.numpy(), atol=1e-5)
    top = persons[0]["without_eld"][0]
    assert top["score"] == pytest.approx(max(persons[0]["scores_without_eld"]))
    assert "without ELD (Â = I)" in reported["index"].read_text(encoding="utf-8")


def test_the_tables_of_other_reports_and_the_mlflow_artifacts(reported):
    import mlflow

    text = "".join(_page(reported["index"]).text)
    assert "no_eld" in text and "Comparison of models" in text
    assert "t6" in text and "t1" not in text.split("sweep-x")[1]  # the 5 best of 7 trials: t6 ... t2
    run_id = json.loads((Path(reported["paths"].model_dir) / "mlflow_run.json").read_text())["run_id"]
    assert reported["data"]["mlflow_run_id"] == run_id
    logged = {Path(a.path).name for a in mlflow.MlflowClient(reported["uri"]).list_artifacts(run_id, "report")}
    assert {"index.html", "data.json", "pr_curves.npz", "person_1.png", "cooccurrence.png"} <= logged


def test_the_command_fails_in_one_line_without_a_model_and_writes_with_one(reported, tiny_workspace, tmp_path,
                                                                           monkeypatch):
    import yaml
    from typer.testing import CliRunner

    from pipelines.cli import app

    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(tiny_workspace.params_dict))
    monkeypatch.chdir(tiny_workspace.root)
    runner = CliRunner()
    missing = runner.invoke(app, ["report", "--model-dir", str(tmp_path / "none"), "--params", str(params_file)])
    assert missing.exit_code == 2 and "make demo" in missing.output and "no trained model" in missing.output
    out = tmp_path / "cli"
    ok = runner.invoke(app, ["report", "--model-dir", str(reported["paths"].model_dir), "--persons", "2",
                             "--no-mlflow", "--out", str(out), "--params", str(params_file)])
    assert ok.exit_code == 0, ok.output
    data = json.loads((out / "data.json").read_text())
    assert [p["why"] for p in data["persons"]] == ["best", "worst"]
    assert data["persons"][0]["row"] == reported["data"]["persons"][0]["row"]
    assert "Not logged to MLflow (--no-mlflow)" in (out / "index.html").read_text(encoding="utf-8")


def _untrained_single_label_rrla(workspace, run: Path):
    """An untrained rrla model.pt for single-label data (task multiclass), as the training stage exports it.

    CAER-S's own tiny workspace costs its objects stage (20-50 s here); the single-label path reads
    nothing CAER-S-specific, so it runs on the EMOTIC tiny workspace, each person's first label
    being its class: the face view (person_view auto), the linear classifier, the confusion matrix.
    """
    from core.data.manifest import read_labels
    from core.params import params_to_dict
    from core.training.inputs import object_feature_stats
    from models import build_model, model_spec

    paths = workspace.train_paths()
    paths = paths.moved(model_dir=run / "model", metrics_file=run / "metrics.json", plots_dir=run / "plots",
                        details_file=run / "metrics_per_class.json", thresholds_file=run / "thresholds.json",
                        reports_dir=run / "reports")
    classes = read_labels(paths.labels_json)
    torch.manual_seed(0)
    model = build_model("rrla", workspace.params.model.family("rrla"), num_classes=len(classes), task="multiclass",
                        load_pretrained=False)
    model.set_object_feature_stats(*object_feature_stats(paths.objects_dir / "train"))
    Path(paths.model_dir).mkdir(parents=True)
    torch.save({"state_dict": model.state_dict(), "spec": model_spec(model), "classes": classes,
                "task": "multiclass", "params": params_to_dict(workspace.params)}, Path(paths.model_dir) / "model.pt")
    return paths


def test_a_single_label_model_gets_the_confusion_matrix_and_one_column(tiny_workspace, tmp_path):
    paths = _untrained_single_label_rrla(tiny_workspace, tmp_path / "run")
    assert report.model_paths(paths, paths.model_dir).metrics_file == paths.metrics_file  # <run>/metrics.json
    evaluate.run(paths, batch_size=4)
    index = report.run(paths, tmp_path / "out", persons=3, seed=0, batch_size=4)
    data = json.loads((tmp_path / "out" / "data.json").read_text())
    assert data["task"] == "multiclass" and data["model"]["person_view"] == "face"
    assert set(data["figures"]) >= {"confusion", "person_1", "channels_1"} and "pr_curves" not in data["figures"]
    assert not (tmp_path / "out" / "pr_curves.npz").exists() and "cooccurrence" not in data["figures"]
    assert all(p["without_eld"] is None for p in data["persons"])
    for person in data["persons"]:  # quality: the softmax probability of the true class
        scores = np.asarray(person["scores"], dtype=np.float64)
        probabilities = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
        assert person["quality"] == pytest.approx(probabilities[data["classes"].index(person["truth"][0])])
        assert person["with_eld"][0]["score"] == pytest.approx(probabilities.max())
    page = index.read_text(encoding="utf-8")
    assert "the model has a linear classifier, not ELD" in page and "is not logged" in page
    assert data["rescored"] == json.loads(Path(paths.metrics_file).read_text())["accuracy"]


def test_the_report_opens_in_headless_chromium_without_errors_and_every_image_loads(reported, tmp_path):
    # A real browser, as a reader opens the folder: no console errors or failed loads, every <img>
    # decoded with a natural width, and a screenshot of the whole page.
    from browser import inspect_page

    screenshot = tmp_path / "report.png"
    seen = inspect_page(reported["index"].resolve().as_uri(), screenshot)
    assert seen["problems"] == []
    sources = [value for tag, key, value in _page(reported["index"]).links if tag == "img"]
    assert [image["src"] for image in seen["images"]] == [src[:120] for src in sources]
    assert all(image["complete"] and image["naturalWidth"] > 0 and image["naturalHeight"] > 0
               for image in seen["images"]), seen["images"]
    from PIL import Image

    with Image.open(screenshot) as shot:
        assert shot.format == "PNG" and shot.width == 1280 and shot.height == seen["height"] > 900
        # not a blank page: the screenshot has the report's text and figures in it
        assert len(set(shot.convert("L").resize((64, 64)).getdata())) > 20
