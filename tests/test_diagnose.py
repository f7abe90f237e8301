"""`ctxemo diagnose`: BOA mass near the person, BPA gates and the object-feature probe, checked by hand."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from pipelines import diagnose

PERSON = [0.0, 0.0, 10.0, 20.0]  # w 10, h 20, centre (5, 10)
# centres (25, 20), (5, 10), (15, 10); the fourth is padding on the person's own centre: the nearest if not masked
OBJECTS = [[20.0, 10.0, 30.0, 30.0], [4.0, 8.0, 6.0, 12.0], [10.0, 0.0, 20.0, 20.0], [5.0, 10.0, 5.0, 10.0]]


def test_distances_are_between_centres_in_units_of_the_person_box():
    d = diagnose.centre_distances(np.array([OBJECTS]), np.array([PERSON]))
    np.testing.assert_allclose(d, [[math.sqrt(2.0**2 + 0.5**2), 0.0, 1.0, 0.0]])
    near = diagnose.nearest_mask(d, np.array([[True, True, True, False]]), 2)
    assert near.tolist() == [[False, True, True, False]]


def test_mass_on_the_nearest_objects_by_hand_with_padding_masked_out():
    boxes = np.array([OBJECTS] * 3)
    mask = np.array([[True, True, True, False], [True, False, False, False], [False] * 4])
    attention = np.zeros((3, 2, 4))
    attention[0] = [[0.5, 0.3, 0.2, 0.7], [0.1, 0.6, 0.3, 0.4]]  # padding weights are garbage: ignored
    attention[1] = [[1.0, 0.0, 0.0, 0.9], [1.0, 0.0, 0.0, 0.0]]
    summary = diagnose.attention_summary(attention, boxes, mask, np.array([PERSON] * 3), k=2)
    # person 0: head-averaged (0.3, 0.45, 0.25); nearest two are objects 1 and 2: 0.7 against 2/3
    # person 1: one object, so 1 against 1; person 2 has no object and is left out
    assert summary["persons"] == 2 and summary["persons_without_objects"] == 1
    assert summary["persons_with_more_than_k"] == 1
    assert summary["mass_nearest"] == pytest.approx((0.7 + 1.0) / 2)
    assert summary["uniform_level"] == pytest.approx((2 / 3 + 1.0) / 2)
    assert summary["mass_ratio"] == pytest.approx(0.85 / (5 / 6))
    assert summary["above_uniform"] == 1.0
    assert summary["per_head_mass_ratio"] == pytest.approx([(0.5 + 1.0) / 2 / (5 / 6), (0.9 + 1.0) / 2 / (5 / 6)])
    entropy = -(0.3 * math.log(0.3) + 0.45 * math.log(0.45) + 0.25 * math.log(0.25))
    assert summary["entropy_ratio"] == pytest.approx(entropy / math.log(3))
    head_entropy = (-(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2))
                    - (0.1 * math.log(0.1) + 0.6 * math.log(0.6) + 0.3 * math.log(0.3))) / 2
    assert summary["head_entropy_ratio"] == pytest.approx(head_entropy / math.log(3))


def test_uniform_attention_sits_exactly_at_the_uniform_level():
    rng = np.random.default_rng(0)
    persons, heads, n = 50, 4, 8
    corners = rng.uniform(0, 100, size=(persons, n, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(1, 30, size=(persons, n, 2))], axis=-1)
    people = np.concatenate([rng.uniform(0, 50, (persons, 2)), rng.uniform(60, 120, (persons, 2))], axis=-1)
    mask = np.arange(n)[None, :] < rng.integers(1, n + 1, size=persons)[:, None]
    attention = np.repeat((mask / mask.sum(axis=1, keepdims=True))[:, None, :], heads, axis=1)
    summary = diagnose.attention_summary(attention, boxes, mask, people, k=3)
    assert summary["mass_ratio"] == pytest.approx(1.0, abs=1e-12)
    assert summary["per_head_mass_ratio"] == pytest.approx([1.0] * heads, abs=1e-12)
    assert summary["entropy_ratio"] == pytest.approx(1.0, abs=1e-12)
    assert summary["head_entropy_ratio"] == pytest.approx(1.0, abs=1e-12)
    assert summary["above_uniform"] == 0.0
    assert diagnose.uniform_summary(mask, 3)["uniform_level"] == pytest.approx(summary["uniform_level"])


class _Body(torch.nn.Module):
    def __init__(self, bpa):
        super().__init__()
        self.bpa = bpa

    def forward(self, feature_map):
        return self.bpa(feature_map)


def test_recorded_bpa_gates_are_the_sigmoid_of_the_bottleneck_recomputed_by_hand():
    from models.bpa import BodyPartAttention

    torch.manual_seed(0)
    body = _Body(BodyPartAttention(channels=6, hidden=3)).eval()
    feature_map = torch.randn(2, 6, 4, 5)
    with diagnose.recording_gates(body.bpa) as records:
        out = body(feature_map)
    body(feature_map)  # after the block: the hook is gone
    w1, b1 = body.bpa.squeeze.weight.detach().numpy(), body.bpa.squeeze.bias.detach().numpy()
    w2, b2 = body.bpa.excite.weight.detach().numpy(), body.bpa.excite.bias.detach().numpy()
    pooled = feature_map.numpy().mean(axis=(2, 3))
    expected = 1.0 / (1.0 + np.exp(-(np.maximum(pooled @ w1.T + b1, 0.0) @ w2.T + b2)))
    assert len(records) == 1
    np.testing.assert_allclose(records[0], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(body.bpa.gates(feature_map).detach().numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.detach().numpy(), feature_map.numpy() * expected[:, :, None, None],
                               rtol=1e-5, atol=1e-6)


def test_gate_summary_by_hand():
    summary = diagnose.gate_summary(np.array([[0.05, 0.95, 0.5], [0.05, 0.97, 0.7]]), top=2)
    assert summary["mean"] == pytest.approx((0.05 + 0.95 + 0.5 + 0.05 + 0.97 + 0.7) / 6)
    assert summary["std_across_persons"] == pytest.approx((0.0 + 0.01 + 0.1) / 3)
    person_std = [math.sqrt((0.45**2 * 2) / 3), float(np.std([0.05, 0.97, 0.7]))]
    assert summary["std_across_channels"] == pytest.approx(sum(person_std) / 2)
    assert summary["channels_below_0.1"] == pytest.approx(1 / 3) and summary["channels_above_0.9"] == pytest.approx(1 / 3)
    assert summary["gates_below_0.1"] == pytest.approx(2 / 6) and summary["gates_above_0.9"] == pytest.approx(2 / 6)
    assert summary["top_channels"] == [{"channel": 1, "mean": pytest.approx(0.96)}, {"channel": 2, "mean": pytest.approx(0.6)}]


def _context_data(rng, persons: int, n: int = 6, dim: int = 12):
    """Objects around a person; what matters is in the features of the one nearest to it."""
    centres = rng.uniform(-3, 3, size=(persons, n, 2)) * [10.0, 20.0] + [5.0, 10.0]
    boxes = np.concatenate([centres - 1.0, centres + 1.0], axis=-1)
    people = np.tile(PERSON, (persons, 1))
    mask = np.ones((persons, n), dtype=bool)
    mask[: persons // 10, n - 2:] = False  # some persons with fewer objects (padding never counts)
    feats = rng.normal(size=(persons, n, dim)).astype(np.float32)
    nearest = diagnose.nearest_mask(diagnose.centre_distances(boxes, people), mask, 1)
    return feats, boxes, mask, people, feats[nearest]


def test_the_probe_finds_a_signal_carried_by_the_nearest_object():
    rng = np.random.default_rng(0)
    directions = rng.normal(size=(12, 3))
    train, val = _context_data(rng, 400), _context_data(rng, 200)
    features = {split: diagnose.probe_features(*data[:4]) for split, data in (("train", train), ("val", val))}
    np.testing.assert_allclose(features["val"]["nearest"], val[4])
    results = {}
    for task, label in (("multilabel", lambda f: (f @ directions > 0).astype(int)),
                        ("multiclass", lambda f: np.argmax(f @ directions, axis=1))):
        y_train, y_val = label(train[4]), label(val[4])
        results[task] = {name: diagnose.fit_probe((features["train"][name], y_train),
                                                  {"val": (features["val"][name], y_val)}, task, 3)["val"]
                         for name in diagnose.PROBE_FEATURES}
    # nearly perfect on the nearest object; the mean of six dilutes the signal
    assert results["multilabel"]["nearest"] > 0.95 and results["multilabel"]["mean"] < results["multilabel"]["nearest"] - 0.2
    assert results["multiclass"]["nearest"] > 0.9 and results["multiclass"]["mean"] < results["multiclass"]["nearest"] - 0.25
    assert results["multilabel"]["weighted"] > results["multilabel"]["mean"]
    again = diagnose.fit_probe((features["train"]["nearest"], label(train[4])),
                               {"val": (features["val"]["nearest"], label(val[4]))}, "multiclass", 3)["val"]
    assert again == results["multiclass"]["nearest"]


def test_closeness_weights_are_a_softmax_of_the_negative_distance_over_valid_objects():
    feats = np.array([[[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [9.0, 9.0]]], dtype=np.float32)
    boxes = np.array([OBJECTS])
    mask = np.array([[True, True, True, False]])
    out = diagnose.probe_features(feats, boxes, mask, np.array([PERSON]), temperature=1.0)
    w = np.exp(-np.array([math.sqrt(4.25), 0.0, 1.0]))
    w /= w.sum()
    np.testing.assert_allclose(out["weighted"], [[w[0], w[1]]], rtol=1e-6)
    np.testing.assert_allclose(out["mean"], [[1 / 3, 1 / 3]], rtol=1e-6)
    np.testing.assert_allclose(out["nearest"], [[0.0, 1.0]])
    empty = diagnose.probe_features(feats, boxes, np.zeros((1, 4), dtype=bool), np.array([PERSON]))
    assert all(not np.any(v) for v in empty.values())


# --------------------------------------------------------------------------- on a tiny generated workspace


def _save_untrained_rrla(workspace, folder, overrides=None):
    """An rrla model.pt as the training stage exports it, seeded and untrained (no Ray, seconds)."""
    from core.data.manifest import read_labels
    from core.params import apply_overrides, params_from_dict, params_to_dict
    from core.training.inputs import load_graph, object_feature_stats
    from models import build_model, model_spec

    params = params_from_dict(apply_overrides(workspace.params_dict, overrides or {}))
    paths = workspace.train_paths()
    classes = read_labels(paths.labels_json)
    torch.manual_seed(0)
    cooccurrence, embeddings = load_graph(paths, len(classes))
    model = build_model("rrla", params.model.family("rrla"), num_classes=len(classes), task="multilabel",
                        cooccurrence=cooccurrence, label_embeddings=embeddings, load_pretrained=False)
    model.set_object_feature_stats(*object_feature_stats(paths.objects_dir / "train"))
    folder.mkdir(parents=True)
    torch.save({"state_dict": model.state_dict(), "spec": model_spec(model), "classes": classes,
                "task": "multilabel", "params": params_to_dict(params)}, folder / "model.pt")
    return paths.moved(model_dir=folder)


def test_run_records_the_model_and_the_probe_on_a_tiny_workspace(tiny_workspace, tmp_path):
    from core.data.manifest import read_manifest
    from core.data.object_store import ObjectStore
    from core.evaluation import evaluate, metrics
    from core.inference import load_model_package

    paths = _save_untrained_rrla(tiny_workspace, tmp_path / "model")
    result = diagnose.run(paths, split="val", nearest=2, batch_size=4, seed=0)

    manifest = read_manifest("val", paths.manifest_dir)
    store = ObjectStore(paths.objects_dir / "val")
    counts = np.array([store.get(store.row_of(s))[2].sum() for s in manifest["sample_id"]])
    att = result["attention"]
    assert result["persons"] == len(manifest) and att["heads"] == 2
    assert att["persons"] == int((counts > 0).sum()) and att["persons_without_objects"] == int((counts == 0).sum())
    assert att["uniform_level"] == pytest.approx(np.mean(np.minimum(2, counts[counts > 0]) / counts[counts > 0]))
    assert 0.0 <= att["mass_nearest"] <= 1.0 and len(att["per_head_mass_ratio"]) == 2
    # the scores come back in manifest order: the evaluation's own val mAP
    reference = evaluate.score_split(load_model_package(paths.model_dir), paths, "val", batch_size=4)
    assert result["model_score"] == pytest.approx(metrics.average_precision(reference.targets, reference.scores).mean)
    assert result["bpa"]["channels"] == 512 and result["bpa"]["persons"] == len(manifest)
    assert 0.0 < result["bpa"]["mean"] < 1.0

    probe = result["probe"]
    assert set(probe["features"]) == set(diagnose.PROBE_FEATURES) and "val" in probe["splits"]
    y = reference.targets
    prevalence = y.mean(axis=0)[y.sum(axis=0) > 0]  # AP of a constant score is the prevalence
    assert probe["baseline"]["val"] == pytest.approx(prevalence.mean())
    assert diagnose.probe(paths, "multilabel", y.shape[1], seed=0) == probe  # deterministic

    md, js = diagnose.write_report(result, tmp_path / "out")
    assert json.loads(js.read_text()) == result
    assert "mass on the nearest 2" in md.read_text() and "closeness-weighted mean" in md.read_text()


def test_boa_and_bpa_off_are_reported_as_such(tiny_workspace, tmp_path):
    paths = _save_untrained_rrla(tiny_workspace, tmp_path / "model",
                                 overrides={"model.rrla.boa.enabled": False, "model.rrla.bpa.enabled": False})
    result = diagnose.run(paths, split="val", nearest=2, with_probe=False, batch_size=4)
    assert result["attention"]["uniform_by_construction"] is True and result["probe"] is None
    assert "no BPA gates" in result["bpa"]["note"]
    text = diagnose.markdown(result)
    assert "uniform by construction" in text and "Linear probe" not in text


def test_the_command_fails_clearly_without_a_model_and_writes_its_report_with_one(tiny_workspace, tmp_path,
                                                                                monkeypatch):
    import yaml
    from typer.testing import CliRunner

    from pipelines.cli import app

    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(tiny_workspace.params_dict))
    monkeypatch.chdir(tiny_workspace.root)
    runner = CliRunner()
    missing = runner.invoke(app, ["diagnose", "--model-dir", str(tmp_path / "none"), "--params", str(params_file)])
    assert missing.exit_code == 2 and "make demo" in missing.output and "dvc repro train" in missing.output
    wrong = runner.invoke(app, ["diagnose", "--split", "train", "--model-dir", str(tmp_path / "none"),
                                "--params", str(params_file)])
    assert wrong.exit_code == 2 and "--split must be one of val, test" in wrong.output
    paths = _save_untrained_rrla(tiny_workspace, tmp_path / "model")
    ok = runner.invoke(app, ["diagnose", "--model-dir", str(paths.model_dir), "--nearest", "2", "--no-probe",
                             "--out", str(tmp_path / "out"), "--params", str(params_file)])
    assert ok.exit_code == 0, ok.output
    assert "mass on the nearest 2" in ok.output
    assert json.loads((tmp_path / "out" / "diagnose.json").read_text())["attention"]["nearest_k"] == 2
