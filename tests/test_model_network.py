"""The full `rrla` network: shapes per backbone and task, gradients, ablation switches,
max_objects, checkpoint round trip, registry, and backbone weight loading (never downloads)."""
from __future__ import annotations

import dataclasses
import io
import json
import urllib.error

import numpy as np
import pytest
import torch
import torchvision
from support import REPO  # noqa: E402

from core.params import load_params
from models import (
    ModelOutput,
    available_models,
    build_loss,
    build_model,
    model_from_checkpoint,
    model_spec,
)
from models.backbones import PretrainedWeightsUnavailable, available_backbones
from models.config import ConfigError, RRLAConfig, ViewConfig, replace_path

INPUT = 64
EMOTIC_CLASSES, CAERS_CLASSES = 26, 7
EMBED_DIM = 50

torch.set_num_threads(1)


def small_config(**changes) -> RRLAConfig:
    """params.yaml's model.rrla section, shrunk so that a forward pass takes milliseconds."""
    cfg = load_params(REPO / "params.yaml").model.rrla
    views = {name: dataclasses.replace(view, size=INPUT) for name, view in cfg.views.items()}
    cfg = dataclasses.replace(cfg, views=views)
    cfg = replace_path(cfg, "boa.heads", 2)
    cfg = replace_path(cfg, "boa.dim", 16)
    cfg = replace_path(cfg, "eld.hidden", 64)
    for dotted, value in changes.items():
        cfg = replace_path(cfg, dotted.replace("__", "."), value)
    return cfg


def label_graph(num_classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    cooccurrence = rng.random((num_classes, num_classes)).astype(np.float32)
    np.fill_diagonal(cooccurrence, 0.0)
    return cooccurrence, rng.standard_normal((num_classes, EMBED_DIM)).astype(np.float32)


def make_model(cfg: RRLAConfig, num_classes: int = EMOTIC_CLASSES, task: str = "multilabel", seed: int = 0):
    torch.manual_seed(seed)
    cooccurrence, embeddings = label_graph(num_classes)
    return build_model(
        "rrla", cfg, num_classes=num_classes, task=task, cooccurrence=cooccurrence, label_embeddings=embeddings
    )


def as_inputs(body, feats, boxes, mask, person, view: str = "body") -> dict[str, torch.Tensor]:
    """The one mapping every registered model's forward takes (`view`: rrla's person view)."""
    return {view: body, "obj_feats": feats, "obj_boxes": boxes, "obj_mask": mask, "person_box": person}


def make_inputs(batch: int = 3, num_objects: int = 6, seed: int = 1, view: str = "body") -> dict[str, torch.Tensor]:
    return as_inputs(*make_tensors(batch, num_objects, seed), view=view)


def make_tensors(batch: int = 3, num_objects: int = 6, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    body = torch.randn(batch, 3, INPUT, INPUT, generator=gen)
    feats = torch.randn(batch, num_objects, 2048, generator=gen).abs().to(torch.float16)
    corner = torch.rand(batch, num_objects, 2, generator=gen) * 200
    size = torch.rand(batch, num_objects, 2, generator=gen) * 100 + 5
    boxes = torch.cat([corner, corner + size], dim=-1)
    counts = torch.tensor([num_objects, num_objects // 2, 0])[:batch]
    mask = torch.arange(num_objects)[None, :] < counts[:, None]
    person = torch.tensor([[20.0, 30.0, 120.0, 250.0]]).repeat(batch, 1)
    return body, feats, boxes, mask, person


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50", "mobilenet_v2"])
@pytest.mark.parametrize("task,num_classes", [("multilabel", EMOTIC_CLASSES), ("multiclass", CAERS_CLASSES)])
def test_shapes_and_gradients_reach_every_parameter(backbone, task, num_classes):
    model = make_model(small_config(backbone__name=backbone), num_classes, task)
    model.train()
    assert model.person_view == ("body" if task == "multilabel" else "face")  # person_view: auto
    inputs = make_inputs(view=model.person_view)
    out = model(inputs)

    assert isinstance(out, ModelOutput) and out.continuous is None
    assert out.logits.shape == (3, num_classes)
    assert out.attention.shape == (3, 2, 6)
    assert torch.isfinite(out.logits).all()
    assert (model.eld is not None) == (task == "multilabel")

    if task == "multilabel":
        targets = (torch.rand(3, num_classes) < 0.3).float()
        loss = build_loss("weighted_mse", task, np.full(num_classes, 0.1))(out.logits, targets)
    else:
        loss = build_loss("cross_entropy", task, None)(out.logits, torch.tensor([0, 3, 6]))
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("backbone,channels", [("resnet18", 512), ("resnet50", 2048), ("mobilenet_v2", 1280)])
def test_body_feature_is_2048_for_every_backbone(backbone, channels):
    model = make_model(small_config(backbone__name=backbone)).eval()
    assert model.backbone.out_channels == channels
    assert (model.body_proj is None) == (channels == 2048)
    if model.body_proj is not None:
        assert model.body_proj.weight.shape == (2048, channels)
    assert model.bpa.squeeze.weight.shape == (32, channels)  # hidden 32 from params.yaml
    with torch.no_grad():
        assert model.body_feature(make_inputs()["body"]).shape == (3, 2048)
        fused, _ = model.fused_feature(make_inputs())
    assert fused.shape == (3, 4096)


def test_no_valid_objects_gives_finite_output_and_zero_context():
    model = make_model(small_config()).eval()
    body, feats, boxes, mask, person = make_tensors()
    feats[2] = float("nan")  # padded rows may hold anything
    with torch.no_grad():
        fused, attention = model.fused_feature(as_inputs(body, feats, boxes, mask, person))
        logits = model(as_inputs(body, feats, boxes, mask, person)).logits
    assert torch.isfinite(logits).all()
    assert torch.equal(fused[2, 2048:], torch.zeros(2048))
    assert torch.equal(attention[2], torch.zeros(2, 6))
    empty = model(as_inputs(body, feats[:, :0], boxes[:, :0], mask[:, :0], person))
    assert empty.logits.shape == (3, EMOTIC_CLASSES) and torch.isfinite(empty.logits).all()


def _load_shared(source: torch.nn.Module, target: torch.nn.Module) -> tuple[set[str], set[str]]:
    result = target.load_state_dict(source.state_dict(), strict=False)
    return set(result.missing_keys), set(result.unexpected_keys)


def test_bpa_off_removes_the_se_block_and_changes_outputs():
    full = make_model(small_config()).eval()
    ablated = make_model(small_config(bpa__enabled=False)).eval()
    missing, unexpected = _load_shared(full, ablated)
    assert missing == set()
    assert unexpected == {k for k in full.state_dict() if k.startswith("bpa.")} != set()
    body = make_inputs()["body"]
    with torch.no_grad():
        body_full = full.body_feature(body)
        body_ablated = ablated.body_feature(body)
        pooled = full.backbone(body).mean(dim=(2, 3))
    assert torch.allclose(body_ablated, full.body_proj(pooled), atol=1e-6)
    assert not torch.allclose(body_full, body_ablated, atol=1e-3)


def test_boa_off_uses_equal_weights_over_valid_objects():
    full = make_model(small_config()).eval()
    ablated = make_model(small_config(boa__enabled=False)).eval()
    assert not any(k.startswith(("boa.object_key", "boa.body_query", "boa.geometry_gate"))
                   for k in ablated.state_dict())
    assert ablated.boa.output_proj.weight.shape == (2048, 2048)
    body, feats, boxes, mask, person = make_tensors()
    with torch.no_grad():
        fused, attention = ablated.fused_feature(as_inputs(body, feats, boxes, mask, person))
        fused_full, _ = full.fused_feature(as_inputs(body, feats, boxes, mask, person))
    assert attention is None
    mean_row1 = feats[1, :3].float().mean(dim=0)  # sample 1 has 3 valid objects
    assert torch.allclose(fused[1, 2048:], ablated.boa.output_proj(mean_row1), atol=1e-5)
    assert torch.equal(fused[2, 2048:], torch.zeros(2048))
    assert not torch.allclose(fused[:2, 2048:], fused_full[:2, 2048:], atol=1e-3)


def test_geometry_off_has_no_geometry_parameters_and_ignores_boxes():
    full = make_model(small_config()).eval()
    ablated = make_model(small_config(boa__geometry=False)).eval()
    assert ablated.boa.geometry_gate is None
    missing, unexpected = _load_shared(full, ablated)
    assert missing == set()
    assert unexpected == {"boa.geometry_gate.weight", "boa.geometry_gate.bias"}

    body, feats, boxes, mask, person = make_tensors()
    moved_boxes, moved_person = boxes.flip(1) * 1.7 + 3.0, person * 0.5
    with torch.no_grad():
        out = ablated(as_inputs(body, feats, boxes, mask, person))
        out_moved = ablated(as_inputs(body, feats, moved_boxes, mask, moved_person))
        out_full = full(as_inputs(body, feats, boxes, mask, person))
        out_full_moved = full(as_inputs(body, feats, moved_boxes, mask, moved_person))
    assert torch.equal(out.logits, out_moved.logits)
    assert not torch.allclose(out_full.logits, out_full_moved.logits, atol=1e-5)
    assert not torch.allclose(out.attention, out_full.attention, atol=1e-3)


def test_eld_off_is_a_linear_classifier_on_f_and_eld_on_is_h2_times_f():
    with_eld = make_model(small_config()).eval()
    without = make_model(small_config(eld__enabled=False)).eval()
    assert without.eld is None and without.classifier.weight.shape == (EMOTIC_CLASSES, 4096)
    assert with_eld.classifier is None and "eld.cooccurrence" in with_eld.state_dict()
    inputs = make_inputs()
    with torch.no_grad():
        fused, _ = without.fused_feature(inputs)
        linear = fused @ without.classifier.weight.T + without.classifier.bias
        # the same score temperature as ELD (model.rrla.eld.scaled): the ablation removes only the graph
        assert torch.allclose(without(inputs).logits, linear / 4096 ** 0.5, atol=1e-6)
        unscaled = make_model(small_config(eld__enabled=False, eld__scaled=False)).eval()
        unscaled.load_state_dict(without.state_dict())
        assert torch.allclose(unscaled(inputs).logits, linear, atol=1e-5)
        fused, _ = with_eld.fused_feature(inputs)
        eld = with_eld.eld
        hidden = torch.nn.functional.leaky_relu(eld.adjacency @ eld.label_embeddings @ eld.gcn1.weight.T, 0.2)
        classifiers = eld.adjacency @ hidden @ eld.gcn2.weight.T
        assert torch.allclose(with_eld(inputs).logits, fused @ classifiers.T / 4096 ** 0.5, atol=1e-4)  # eld.scaled


def test_backbone_swap_changes_the_trunk():
    counts = {
        name: sum(p.numel() for p in make_model(small_config(backbone__name=name)).backbone.parameters())
        for name in available_backbones()
    }
    assert counts == {
        "resnet50": 23_508_032,
        "resnet18": 11_176_512,
        "mobilenet_v2": 2_223_872,
    }


def test_multiclass_head_is_one_fc_layer_even_with_eld_enabled():
    model = build_model("rrla", small_config(), num_classes=CAERS_CLASSES, task="multiclass",
                        cooccurrence=None, label_embeddings=None)
    assert model.eld is None
    assert model.classifier.weight.shape == (CAERS_CLASSES, 4096)
    assert model_spec(model)["embedding_dim"] is None
    assert model.classifier_scale == 1.0  # the paper's CAER-S FC layer, unscaled


def test_eld_without_graph_inputs_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"cooccurrence.*label_embeddings.*model\.rrla\.eld\.enabled: false"):
        build_model("rrla", small_config(), num_classes=EMOTIC_CLASSES, task="multilabel",
                    cooccurrence=None, label_embeddings=None)
    cooccurrence, embeddings = label_graph(5)
    with pytest.raises(ValueError, match="5x5 but num_classes is 26"):
        build_model("rrla", small_config(), num_classes=EMOTIC_CLASSES, task="multilabel",
                    cooccurrence=cooccurrence, label_embeddings=embeddings)


def test_max_objects_reads_only_the_first_objects():
    limited = make_model(small_config(boa__max_objects=2)).eval()
    body, feats, boxes, mask, person = make_tensors()
    with torch.no_grad():
        out = limited(as_inputs(body, feats, boxes, mask, person))
        out_first_two = limited(as_inputs(body, feats[:, :2], boxes[:, :2], mask[:, :2], person))
    assert out.attention.shape == (3, 2, 2)
    assert torch.equal(out.logits, out_first_two.logits)


def test_checkpoint_round_trip_gives_identical_outputs():
    model = make_model(small_config(backbone__name="mobilenet_v2", boa__max_objects=4))
    model.set_label_graph(t=0.35, p=0.4)
    model.train()
    model(make_inputs())  # moves the BatchNorm running statistics away from their init
    model.eval()

    buffer = io.BytesIO()
    torch.save({"spec": json.dumps(model_spec(model)), "state_dict": model.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    spec = json.loads(saved["spec"])
    assert spec["format"] == "ctxemo.model_spec/2" and spec["name"] == "rrla"
    assert spec["config"]["eld"]["t"] == 0.35 and spec["config"]["eld"]["p"] == 0.4
    assert spec["embedding_dim"] == EMBED_DIM and spec["num_classes"] == EMOTIC_CLASSES

    rebuilt = model_from_checkpoint(spec, saved["state_dict"])
    assert not rebuilt.training
    assert rebuilt.config == model.config
    inputs = make_inputs()
    with torch.no_grad():
        expected, got = model(inputs), rebuilt(inputs)
    assert torch.equal(expected.logits, got.logits)
    assert torch.equal(expected.attention, got.attention)
    assert torch.equal(rebuilt.eld.adjacency, model.eld.adjacency)


def test_checkpoint_accepts_ddp_prefix_and_rejects_mismatch():
    model = make_model(small_config(eld__enabled=False)).eval()
    spec = model_spec(model)
    prefixed = {f"module.{k}": v for k, v in model.state_dict().items()}
    rebuilt = model_from_checkpoint(spec, prefixed)
    inputs = make_inputs()
    with torch.no_grad():
        assert torch.equal(rebuilt(inputs).logits, model(inputs).logits)
    wrong = dict(spec, config=dict(spec["config"], boa=dict(spec["config"]["boa"], heads=4)))
    with pytest.raises(ConfigError, match="does not match its model spec"):
        model_from_checkpoint(wrong, model.state_dict())
    with pytest.raises(ConfigError, match="expected format"):
        model_from_checkpoint({"config": spec["config"]}, model.state_dict())
    with pytest.raises(ConfigError, match="expected format"):  # a spec of the pre-family format
        model_from_checkpoint(dict(spec, format="ctxemo.model_spec/1"), model.state_dict())
    with pytest.raises(ConfigError, match=r"lacks \['name'\]"):
        model_from_checkpoint({k: v for k, v in spec.items() if k != "name"}, model.state_dict())


def test_registry_lists_rrla_and_rejects_unknown_names():
    assert "rrla" in available_models()
    with pytest.raises(ConfigError, match="unknown model 'nope'.*rrla"):
        build_model("nope", small_config(), num_classes=3, task="multiclass")
    with pytest.raises(ConfigError, match="unknown backbone 'vgg'"):
        build_model("rrla", small_config(backbone__name="vgg"), num_classes=3, task="multiclass")
    with pytest.raises(ConfigError, match="task must be one of"):
        build_model("rrla", small_config(), num_classes=3, task="regression")


def test_pretrained_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    attempts = []

    def no_network(url, dst, *args, **kwargs):
        attempts.append(url)
        raise urllib.error.URLError("offline (test)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(PretrainedWeightsUnavailable) as info:
        build_model("rrla", small_config(backbone__pretrained=True, eld__enabled=False),
                    num_classes=CAERS_CLASSES, task="multiclass")
    message = str(info.value)
    expected_path = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert attempts == [torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url]
    assert "torchvision.models.ResNet18_Weights.IMAGENET1K_V1" in message
    assert str(expected_path) in message
    assert "model.rrla.backbone.weights" in message
    assert isinstance(info.value, ConfigError)


def test_local_weights_file_is_loaded_and_checked(tmp_path):
    torch.manual_seed(123)
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    model = build_model("rrla", small_config(backbone__weights=str(path)), num_classes=3, task="multiclass")
    assert torch.equal(model.backbone.trunk[0].weight, reference.conv1.weight)
    assert torch.equal(model.backbone.trunk[7][1].conv2.weight, reference.layer4[1].conv2.weight)

    # model_from_checkpoint never reads the file again: it may be gone by then.
    spec, state = model_spec(model), model.state_dict()
    path.unlink()
    rebuilt = model_from_checkpoint(spec, state)
    assert torch.equal(rebuilt.backbone.trunk[0].weight, reference.conv1.weight)

    with pytest.raises(PretrainedWeightsUnavailable, match="file not found"):
        build_model("rrla", small_config(backbone__weights=str(path)), num_classes=3, task="multiclass")
    wrong = tmp_path / "mobilenet.pth"
    torch.save(torchvision.models.mobilenet_v2(weights=None).state_dict(), wrong)
    with pytest.raises(PretrainedWeightsUnavailable, match="do not fit torchvision resnet18"):
        build_model("rrla", small_config(backbone__weights=str(wrong)), num_classes=3, task="multiclass")


def test_input_shape_errors_name_the_tensor():
    model = make_model(small_config()).eval()
    body, feats, boxes, mask, person = make_tensors()
    with pytest.raises(ValueError, match="obj_mask must be"):
        model(as_inputs(body, feats, boxes, mask[:, :2], person))
    with pytest.raises(ValueError, match="obj_feats must be"):
        model(as_inputs(body, feats[..., :100], boxes, mask, person))
    inputs = as_inputs(body, feats, boxes, mask, person)
    with pytest.raises(ValueError, match=r"missing \['obj_boxes'\]"):
        model({k: v for k, v in inputs.items() if k != "obj_boxes"})


def test_person_view_auto_reads_the_face_on_single_label_data_and_the_body_otherwise():
    multilabel = make_model(small_config())
    multiclass = make_model(small_config(), CAERS_CLASSES, "multiclass")
    forced = make_model(small_config(person_view="body"), CAERS_CLASSES, "multiclass")
    assert (multilabel.person_view, multiclass.person_view, forced.person_view) == ("body", "face", "body")
    assert multilabel.views == ("body", "objects") and multiclass.views == ("face", "objects")
    assert set(multiclass.view_specs) == {"face"} and multiclass.view_specs["face"].size == INPUT
    assert multilabel.view_specs["body"].size == INPUT
    body, feats, boxes, mask, person = make_tensors()
    with torch.no_grad():
        from_face = multiclass.eval()(as_inputs(body, feats, boxes, mask, person, view="face")).logits
        from_body = forced.eval()(as_inputs(body, feats, boxes, mask, person, view="body")).logits
    assert from_face.shape == from_body.shape == (3, CAERS_CLASSES)
    assert torch.isfinite(from_face).all() and torch.isfinite(from_body).all()
    with pytest.raises(ValueError, match=r"missing \['face'\]"):
        multiclass(as_inputs(body, feats, boxes, mask, person, view="body"))
    with pytest.raises(ValueError, match=r"missing \['body'\]"):
        forced(as_inputs(body, feats, boxes, mask, person, view="face"))
    with pytest.raises(ConfigError, match="person_view must be one of"):
        make_model(small_config(person_view="image"))
    # both person views are required when params load, whichever the data makes it read
    with pytest.raises(ConfigError, match=r"model\.rrla\.views.*\['face'\]"):
        dataclasses.replace(small_config(), views={"body": ViewConfig(INPUT, "imagenet")})


def test_build_model_takes_the_params_dict_of_the_section_too():
    from models.config import to_dict

    typed = make_model(small_config(boa__heads=4), CAERS_CLASSES, "multiclass")
    from_dict_cfg = build_model("rrla", to_dict(small_config(boa__heads=4)), num_classes=CAERS_CLASSES,
                                task="multiclass")
    assert from_dict_cfg.config == typed.config and from_dict_cfg.family == "rrla"
    assert {k: v.shape for k, v in from_dict_cfg.state_dict().items()} == {
        k: v.shape for k, v in typed.state_dict().items()}
    with pytest.raises(ConfigError, match=r"model\.rrla\.boa: unknown key"):
        build_model("rrla", dict(to_dict(small_config()), boa={"headz": 4}), num_classes=3, task="multiclass")


def test_nan_or_huge_padded_boxes_change_nothing_and_keep_every_gradient_finite():
    model = make_model(small_config()).train()
    body, feats, boxes, mask, person = make_tensors()
    target = torch.zeros(3, EMOTIC_CLASSES)
    clean = model(as_inputs(body, feats, boxes, mask, person)).logits
    for padding in (float("nan"), 1e30):
        padded = torch.where(mask.unsqueeze(-1), boxes, torch.full_like(boxes, padding))
        model.zero_grad()
        logits = model(as_inputs(body, feats, padded, mask, person)).logits
        torch.testing.assert_close(logits, clean)  # padding never reaches the output
        ((logits - target) ** 2).sum().backward()
        bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        assert bad == [], f"non-finite gradients with {padding} padding: {bad}"


def test_the_standardisation_switch_leaves_object_features_as_stored_with_the_same_state_dict_keys():
    full = make_model(small_config())
    plain = make_model(small_config(standardise_objects=False))
    mean, std = np.full(2048, 3.0, np.float32), np.full(2048, 2.0, np.float32)
    full.set_object_feature_stats(mean, std)
    plain.set_object_feature_stats(mean, std)
    assert torch.equal(full.object_feature_mean, torch.full((2048,), 3.0))
    assert torch.equal(plain.object_feature_mean, torch.zeros(2048))
    assert torch.equal(plain.object_feature_std, torch.ones(2048))
    assert plain.state_dict().keys() == full.state_dict().keys()
    plain.load_state_dict({k: v for k, v in full.state_dict().items() if not k.startswith("object_feature")},
                          strict=False)  # every shared weight loads; only the switched buffers differ


def test_a_channel_dead_on_the_training_split_is_not_blown_up_at_test_time():
    """#17: a channel always 0 in training (std 0) that is 0.05 at test time. With the old std floor
    of 1e-6 it became 50,000 and the logits jumped (0.26 -> 137 measured); now it is centred only."""
    model = make_model(small_config()).eval()
    dead = 7
    mean, std = np.zeros(2048, np.float32), np.ones(2048, np.float32)
    std[dead] = 0.0
    model.set_object_feature_stats(mean, std)
    assert model.object_feature_std[dead] == 1.0 and torch.all(model.object_feature_std[:dead] == 1.0)
    inputs = make_inputs()
    inputs["obj_feats"] = inputs["obj_feats"].clone()
    inputs["obj_feats"][..., dead] = 0.0
    awake = dict(inputs, obj_feats=inputs["obj_feats"].clone())
    awake["obj_feats"][..., dead] = 0.05
    with torch.no_grad():
        change = (model(awake).logits - model(inputs).logits).abs().max().item()
        assert change < 0.05
        model.object_feature_std[dead] = 1e-6  # the old floor: the same input moves the logits by far more
        blown = (model(awake).logits - model(inputs).logits).abs().max().item()
    assert blown > 100 * max(change, 1e-6) and blown > 0.5


@pytest.mark.parametrize("switch", [{"eld__propagation": "transposed"}, {"eld__activation": "every_layer"}])
def test_eld_readings_load_the_full_models_weights_and_change_only_the_scores(switch):
    full = make_model(small_config()).eval()
    switched = make_model(small_config(**switch), seed=1).eval()
    assert _load_shared(full, switched) == (set(), set())
    inputs = make_inputs()
    with torch.no_grad():
        fused_full, attention_full = full.fused_feature(inputs)
        fused_switched, attention_switched = switched.fused_feature(inputs)
        assert torch.equal(fused_full, fused_switched) and torch.equal(attention_full, attention_switched)
        assert not torch.allclose(full(inputs).logits, switched(inputs).logits, atol=1e-4)


def test_a_checkpoint_written_before_the_standardisation_switch_and_eld_readings_loads_as_it_was_trained():
    model = make_model(small_config()).eval()
    spec = model_spec(model)
    for key in ("propagation", "activation"):
        del spec["config"]["eld"][key]
    del spec["config"]["standardise_objects"]  # added in #17: before it, the features were always standardised
    rebuilt = model_from_checkpoint(spec, model.state_dict())
    assert (rebuilt.config.eld.propagation, rebuilt.config.eld.activation) == ("as_written", "between_layers")
    assert rebuilt.config.standardise_objects is True
    with torch.no_grad():
        assert torch.equal(rebuilt(make_inputs()).logits, model(make_inputs()).logits)
