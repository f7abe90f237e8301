"""DAG-Net (models/dagnet.py, models/dagnet_modules.py, models/dagnet_config.py): each module's
shapes, the learned adjacency's gradient, the GCN layer and the KL loss against hand
computations, the patch grid with N = 1..4 end to end, every ablation switch for one optimiser
step, the registry and checkpoint round trip, config and input errors."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from core.data.dataset import view_tensor
from core.data.views import patch_grid
from models.backbones import build_backbone
from models.config import BackboneConfig, ConfigError, ViewSpec, from_dict, to_dict
from models.dagnet import (
    ATTENTION_LOGITS,
    DAGNet,
    build_dagnet,
    build_dagnet_criterion,
    kl_divergence,
)
from models.dagnet_config import DAGNetConfig
from models.dagnet_modules import (
    BodyAttention,
    GlobalSpatialAttention,
    GraphLayers,
    LearnedAdjacency,
    LocalSpatialAttention,
    grid_adjacency,
)
from models.factory import build_model, model_from_checkpoint, model_spec
from models.output import ModelOutput
from models.registry import model_family

torch.set_num_threads(1)
BATCH, BODY, CONTEXT, WHOLE = 2, 32, 32, 32
EMOTIC, CAERS = 26, 7
RESNET18 = {"name": "resnet18", "pretrained": False, "weights": None}


def config_dict(**overrides) -> dict:
    """The test section; `overrides` by dotted key with '__' for '.', e.g. lsam__n=2."""
    data = {
        "views": {"body": {"size": BODY, "norm": "imagenet"}, "image_body_masked": {"size": CONTEXT, "norm": "imagenet"},
                  "patches": {"size": WHOLE, "norm": "imagenet"}},
        "body_backbone": dict(RESNET18),
        "context_backbone": dict(RESNET18),
        "bam": {"enabled": True, "hidden": 4},
        "gsam": {"enabled": True, "residual": True, "hidden": 8},
        "lsam": {"enabled": True, "gcn": True, "n": 2, "channels": [4, 4], "node_pool": 2, "gcn_dims": [16, 16, 8],
                 "fc_dim": 8, "adjacency_init": "grid"},
        "classifier_hidden": None,
        "dropout": 0.5,
        "loss": {"kind": "kl", "attention_weight": 1.0},
        "train": {"optimizer": "adam", "lr": 0.0001, "batch_size": 32},
    }
    for dotted, value in overrides.items():
        *path, last = dotted.split("__")
        node = data
        for key in path:
            node = node[key]
        if value is _DELETE:
            del node[last]
        else:
            node[last] = value
    return data


_DELETE = object()


def make_cfg(**overrides) -> DAGNetConfig:
    return from_dict(DAGNetConfig, config_dict(**overrides), "model.dagnet")


def make_model(task: str = "multilabel", num_classes: int = EMOTIC, **overrides) -> DAGNet:
    torch.manual_seed(0)
    return build_dagnet(make_cfg(**overrides), num_classes=num_classes, task=task, cooccurrence=np.zeros((2, 2)),
                        label_embeddings=np.zeros((2, 3)), load_pretrained=True)


def make_inputs(model: DAGNet, batch: int = BATCH, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    inputs = {"body": torch.randn(batch, 3, BODY, BODY, generator=gen),
              "image_body_masked": torch.randn(batch, 3, CONTEXT, CONTEXT, generator=gen)}
    if "patches" in model.views:
        spec = model.view_specs["patches"]
        inputs["patches"] = torch.randn(batch, spec.grid ** 2, 3, spec.size, spec.size, generator=gen)
    return inputs


def make_target(task: str, batch: int = BATCH, num_classes: int = EMOTIC) -> torch.Tensor:
    if task == "multiclass":
        return torch.arange(batch) % num_classes
    target = torch.zeros(batch, num_classes)
    for row in range(batch):
        target[row, [row % num_classes, (3 * row + 5) % num_classes]] = 1.0
    return target


# --- the modules ----------------------------------------------------------------------


def test_bam_weight_is_one_value_in_0_1_per_body_image_and_ignores_pixel_order():
    torch.manual_seed(0)
    bam = BodyAttention(hidden=6)
    body = torch.randn(3, 3, 20, 14)
    weight = bam(body)
    assert weight.shape == (3, 1) and ((weight > 0) & (weight < 1)).all()
    manual = torch.sigmoid(bam.conv2(torch.relu(bam.conv1(body))).mean(dim=(2, 3)))
    assert torch.allclose(weight, manual)
    # 1x1 convolutions and a global mean: a function of each pixel's colour, not of where it is
    shuffled = body.flatten(2)[:, :, torch.randperm(20 * 14)].reshape(3, 3, 20, 14)
    assert torch.allclose(bam(shuffled), weight, atol=1e-6)


@pytest.mark.parametrize("residual", [True, False])
def test_gsam_shapes_and_eq3_by_hand(residual):
    torch.manual_seed(0)
    backbone = build_backbone(BackboneConfig("resnet18", False, None), load_weights=False)
    gsam = GlobalSpatialAttention(backbone, hidden=8, num_classes=EMOTIC, residual=residual).eval()
    image = torch.randn(BATCH, 3, 64, 64)
    with torch.no_grad():
        feature, attention, logits = gsam(image)
        g = gsam.extractor(image)
        weights = attention.unsqueeze(1) + (1.0 if residual else 0.0)
        manual = gsam.perception(weights * g).mean(dim=(2, 3))
    assert feature.shape == (BATCH, 512) and logits.shape == (BATCH, EMOTIC)
    assert attention.shape == (BATCH, 4, 4) == (BATCH, *g.shape[2:])  # layer3: input / 16
    assert ((attention > 0) & (attention < 1)).all()
    assert torch.allclose(feature, manual, atol=1e-5)


def test_lsam_paper_widths_give_1024_d_nodes_and_a_512_d_feature():
    torch.manual_seed(0)
    lsam = LocalSpatialAttention(n=4, channels=(64, 64), pool=4, gcn=True, dims=(1024, 1024, 512), fc_dim=512,
                                 adjacency_init="grid")
    patches = torch.randn(BATCH, 16, 3, 12, 12)
    feature, nodes = lsam(patches)
    assert nodes.shape == (BATCH, 16, 1024) and feature.shape == (BATCH, 512)
    assert (feature >= 0).all()  # the mean of ReLU outputs
    assert tuple(lsam.adjacency.raw.shape) == (16, 16)


def test_lsam_without_gcn_sums_a_shared_linear_over_the_patches():
    torch.manual_seed(0)
    lsam = LocalSpatialAttention(n=3, channels=(4, 4), pool=2, gcn=False, dims=(16,), fc_dim=5, adjacency_init="grid")
    assert lsam.adjacency is None and lsam.graph is None and lsam.out_dim == 5
    patches = torch.randn(BATCH, 9, 3, 8, 8)
    feature, nodes = lsam(patches)
    assert nodes.shape == (BATCH, 9, 16) and feature.shape == (BATCH, 5)
    assert torch.allclose(feature, torch.relu(lsam.fc(nodes)).sum(dim=1))


def test_learned_adjacency_is_row_stochastic_and_starts_as_the_grid_graph():
    grid = grid_adjacency(3)
    assert grid.shape == (9, 9) and torch.equal(grid, grid.T)
    assert grid.sum().item() == 9 + 2 * 12  # self loops + both directions of the 12 grid edges
    adjacency = LearnedAdjacency(3, "grid")()
    assert (adjacency > 0).all() and torch.allclose(adjacency.sum(dim=1), torch.ones(9))
    assert torch.equal(adjacency > 0.05, grid > 0)  # neighbours high, every other pair small but not 0
    assert torch.allclose(LearnedAdjacency(3, "uniform")(), torch.full((9, 9), 1 / 9))
    assert torch.equal(LearnedAdjacency(1, "grid")(), torch.ones(1, 1))


def test_gcn_layer_equals_eq4_by_hand_on_three_nodes():
    torch.manual_seed(0)
    layers = GraphLayers(4, (2,))
    layer = layers.layers[0]
    with torch.no_grad():
        layer.bias.copy_(torch.tensor([0.3, -0.2]))
    adjacency = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5], [0.0, 0.1, 0.9]])  # rows sum to 1
    x = torch.randn(2, 3, 4)
    weight = layer.lin.weight  # [out, in]: H W = x @ weight.T
    manual = torch.relu(torch.einsum("ij,bjf->bif", adjacency, x @ weight.T) + layer.bias)
    assert torch.allclose(layers(x, adjacency), manual, atol=1e-6)
    # node 0 is not linked to node 2: changing node 2 leaves node 0's output alone
    moved = x.clone()
    moved[:, 2] += 10.0
    assert torch.allclose(layers(moved, adjacency)[:, 0], layers(x, adjacency)[:, 0])


# --- the whole network ----------------------------------------------------------------


@pytest.mark.parametrize("task,num_classes", [("multilabel", EMOTIC), ("multiclass", CAERS)])
def test_full_forward_shapes_and_attributes(task, num_classes):
    model = make_model(task, num_classes)
    out = model(make_inputs(model))
    assert isinstance(out, ModelOutput) and out.continuous is None
    assert out.logits.shape == (BATCH, num_classes) and torch.isfinite(out.logits).all()
    assert out.attention.shape == (BATCH, CONTEXT // 16, CONTEXT // 16)
    assert set(out.auxiliary) == {ATTENTION_LOGITS} and out.auxiliary[ATTENTION_LOGITS].shape == (BATCH, num_classes)
    assert model.views == ("body", "image_body_masked", "patches")
    assert model.num_classes == num_classes and model.task == task
    assert model.embedding_dim is None and model.predicts_vad is False
    patches = model.view_specs["patches"]
    assert (patches.size, patches.grid) == (WHOLE // 2, 2)
    assert {k: v.size for k, v in model.view_specs.items()} == {"body": BODY, "image_body_masked": CONTEXT,
                                                               "patches": WHOLE // 2}
    parts = model.parts(make_inputs(model))
    assert parts.body_weight.shape == (BATCH, 1) and parts.nodes.shape == (BATCH, 4, 16)
    assert parts.local_feature.shape == (BATCH, 8) and parts.context_feature.shape == (BATCH, 512)


def test_patch_size_is_the_whole_image_over_n_with_a_floor_of_8():
    assert make_cfg(views__patches={"size": 224, "norm": "imagenet"}, lsam__n=4).patch_size == 56
    assert make_cfg(views__patches={"size": 224, "norm": "imagenet"}, lsam__n=9).patch_size == 25
    assert make_cfg(views__patches={"size": 32, "norm": "imagenet"}, lsam__n=9).patch_size == 8


def test_kl_logits_are_log_probabilities_and_bce_logits_are_raw():
    model = make_model().eval()
    with torch.no_grad():
        logits = model(make_inputs(model)).logits
    assert torch.allclose(torch.logsumexp(logits, dim=1), torch.zeros(BATCH), atol=1e-5)
    assert (logits < 0).all()
    bce = make_model(loss__kind="bce").eval()
    with torch.no_grad():
        parts = bce.parts(make_inputs(bce))
        raw = bce.classifier(torch.cat([parts.body_feature, parts.context_feature, parts.local_feature], dim=1))
    assert torch.equal(parts.logits, raw)


def test_the_learned_adjacency_receives_gradients():
    model = make_model().train()
    criterion = build_dagnet_criterion(model.config, task="multilabel")
    loss = criterion(model(make_inputs(model)), {"target": make_target("multilabel")})
    loss.backward()
    grad = model.lsam.adjacency.raw.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert grad.shape == (4, 4)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_patches_tile_the_image_exactly_and_the_model_reads_n_squared_of_them(n):
    rng = np.random.default_rng(n)
    odd = rng.integers(0, 256, size=(37, 29, 3), dtype=np.uint8)  # sides not divisible by n
    patches = patch_grid(odd, n)
    rows = [np.concatenate(patches[r * n:(r + 1) * n], axis=1) for r in range(n)]
    assert len(patches) == n * n and np.array_equal(np.concatenate(rows, axis=0), odd)
    # through the loader: a 24-pixel image is cut into n x n tiles of 24 / n, kept at that size
    rgb = rng.integers(0, 256, size=(24, 24, 3), dtype=np.uint8)
    side = 24 // n
    tensor = view_tensor("patches", rgb, ViewSpec(size=side, mean=(0.0,) * 3, std=(1.0,) * 3, grid=n),
                         body_box=[2, 2, 10, 10], face_box=None)
    assert tensor.shape == (n * n, 3, side, side)
    grid = tensor.reshape(n, n, 3, side, side).permute(2, 0, 3, 1, 4).reshape(3, 24, 24)
    assert torch.allclose(grid, torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0)
    # the model built for this n reads the loader's tensor with its own spec, and no other count
    model = make_model(lsam__n=n).eval()
    spec = model.view_specs["patches"]
    person = view_tensor("patches", rgb, spec, body_box=[2, 2, 10, 10], face_box=None)
    inputs = {**make_inputs(model), "patches": torch.stack([person, person])}
    assert inputs["patches"].shape == (BATCH, n * n, 3, spec.size, spec.size)
    with torch.no_grad():
        assert model(inputs).logits.shape == (BATCH, EMOTIC)
    for count in (n * n + 1, (n + 1) ** 2):
        wrong = {**inputs, "patches": torch.randn(BATCH, count, 3, spec.size, spec.size)}
        with pytest.raises(ValueError, match=rf"{count} patches per person.*lsam.n = {n}"):
            model(wrong)


ABLATIONS = {
    "full": {},
    "no_bam": {"bam__enabled": False},
    "no_gsam": {"gsam__enabled": False},
    "no_lsam": {"lsam__enabled": False},
    "only_bam": {"gsam__enabled": False, "lsam__enabled": False},
    "only_gsam": {"bam__enabled": False, "lsam__enabled": False},
    "only_lsam": {"bam__enabled": False, "gsam__enabled": False},
    "lsam_without_gcn": {"lsam__gcn": False},
    "bce": {"loss__kind": "bce"},
    "gsam_not_residual": {"gsam__residual": False},
    "mlp_classifier_uniform_adjacency": {"classifier_hidden": 8, "lsam__adjacency_init": "uniform", "lsam__n": 1},
}


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_every_ablation_builds_and_trains_one_step(name):
    overrides = ABLATIONS[name]
    model = make_model(**overrides).train()
    cfg = model.config
    assert model.views == ("body", "image_body_masked") + (("patches",) if cfg.lsam.enabled else ())
    assert set(model.view_specs) == set(model.views)
    assert (model.bam is None) != cfg.bam.enabled and (model.lsam is None) != cfg.lsam.enabled
    criterion = build_dagnet_criterion(cfg, task="multilabel", loss_name="weighted_mse", label_freq=None, seed=3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = {key: value.detach().clone() for key, value in model.named_parameters()}
    out = model(make_inputs(model))
    assert (out.attention is None) != cfg.gsam.enabled and (out.auxiliary is None) != cfg.gsam.enabled
    loss = criterion(out, {"target": make_target("multilabel")})
    assert loss.dim() == 0 and torch.isfinite(loss)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    after = dict(model.named_parameters())
    assert all(torch.isfinite(p).all() for p in after.values())
    changed = {key.split(".")[0] for key in before if not torch.equal(before[key], after[key])}
    expected = {"body_backbone", "context", "classifier"} | {m for m in ("bam", "lsam") if getattr(model, m) is not None}
    assert changed == expected


def test_multiclass_trains_one_step_with_cross_entropy():
    model = make_model("multiclass", CAERS).train()
    criterion = build_dagnet_criterion(model.config, task="multiclass")
    assert criterion.name == "dagnet_cross_entropy"
    loss = criterion(model(make_inputs(model)), {"target": make_target("multiclass", num_classes=CAERS)})
    loss.backward()
    assert torch.isfinite(loss) and model.classifier[-1].weight.grad.abs().sum() > 0


# --- the loss -------------------------------------------------------------------------


def test_kl_loss_equals_a_hand_computation():
    logits = torch.tensor([[1.0, 2.0, 0.5], [0.0, 0.0, 3.0]])
    target = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])

    def log_q(row, j):
        return row[j] - math.log(sum(math.exp(v) for v in row))

    rows = logits.tolist()
    first = 0.5 * (math.log(0.5) - log_q(rows[0], 0)) + 0.5 * (math.log(0.5) - log_q(rows[0], 2))
    second = 1.0 * (math.log(1.0) - log_q(rows[1], 1))
    expected = (first + second) / 2
    assert kl_divergence(logits, target).item() == pytest.approx(expected, rel=1e-6)
    # log-probabilities in, the same loss out; the same as torch's KL with the normalised targets
    assert kl_divergence(torch.log_softmax(logits, 1), target).item() == pytest.approx(expected, rel=1e-6)
    p = target / target.sum(1, keepdim=True)
    torch_kl = F.kl_div(torch.log_softmax(logits, 1), p, reduction="batchmean")
    assert torch_kl.item() == pytest.approx(expected, rel=1e-6)
    # a person without labels adds nothing
    padded = kl_divergence(torch.cat([logits, logits[:1]]), torch.cat([target, torch.zeros(1, 3)]))
    assert padded.item() == pytest.approx(expected * 2 / 3, rel=1e-6)


def test_criterion_adds_the_attention_branch_loss_with_its_weight():
    logits = torch.randn(3, 5)
    branch = torch.randn(3, 5)
    target = torch.tensor([[1.0, 0, 0, 1, 0], [0, 1, 0, 0, 0], [0, 0, 1, 1, 1]])
    output = ModelOutput(logits=logits, auxiliary={ATTENTION_LOGITS: branch})
    kl = build_dagnet_criterion(make_cfg(loss__attention_weight=0.25), task="multilabel")
    assert kl.name == "dagnet_kl"
    expected = kl_divergence(logits, target) + 0.25 * kl_divergence(branch, target)
    assert torch.allclose(kl(output, {"target": target}), expected)
    bce = build_dagnet_criterion(make_cfg(loss__kind="bce"), task="multilabel")
    expected = F.binary_cross_entropy_with_logits(logits, target) + F.binary_cross_entropy_with_logits(branch, target)
    assert bce.name == "dagnet_bce" and torch.allclose(bce(output, {"target": target}), expected)
    no_gsam = build_dagnet_criterion(make_cfg(gsam__enabled=False), task="multilabel")
    assert torch.allclose(no_gsam(ModelOutput(logits=logits), {"target": target}), kl_divergence(logits, target))
    ids = torch.tensor([0, 4, 2])
    ce = build_dagnet_criterion(make_cfg(loss__kind="bce"), task="multiclass")
    expected = F.cross_entropy(logits, ids) + F.cross_entropy(branch, ids)
    assert torch.allclose(ce(output, {"target": ids}), expected)
    # KL to a one-hot target is the cross-entropy
    assert torch.allclose(kl_divergence(logits, F.one_hot(ids, 5).float()), F.cross_entropy(logits, ids))


def test_criterion_errors_are_clear():
    criterion = build_dagnet_criterion(make_cfg(), task="multilabel")
    with pytest.raises(ValueError, match="no auxiliary 'attention_logits'"):
        criterion(ModelOutput(logits=torch.randn(2, 4)), {"target": torch.ones(2, 4)})
    with pytest.raises(ValueError, match=r"\[B,K\] shape"):
        criterion(ModelOutput(logits=torch.randn(2, 4)), {"target": torch.ones(2, 5)})
    with pytest.raises(ValueError, match="no 'target'"):
        criterion(ModelOutput(logits=torch.randn(2, 4)), {})
    multiclass = build_dagnet_criterion(make_cfg(gsam__enabled=False), task="multiclass")
    with pytest.raises(ValueError, match="integer class ids"):
        multiclass(ModelOutput(logits=torch.randn(2, 4)), {"target": torch.ones(2, 4)})


# --- registry, checkpoints, parameters ------------------------------------------------


def test_registry_factory_and_checkpoint_round_trip():
    family = model_family("dagnet")
    assert family.config is DAGNetConfig and family.criterion is build_dagnet_criterion
    cfg = make_cfg(lsam__n=3)
    assert from_dict(DAGNetConfig, to_dict(cfg), "model.dagnet") == cfg
    torch.manual_seed(0)
    model = build_model("dagnet", config_dict(lsam__n=3), num_classes=EMOTIC, task="multilabel").eval()
    rebuilt = model_from_checkpoint(model_spec(model), model.state_dict())
    inputs = make_inputs(model)
    with torch.no_grad():
        assert torch.equal(model(inputs).logits, rebuilt(inputs).logits)


def test_backbone_parameters_are_the_two_resnet_trunks():
    for overrides in ({}, {"gsam__enabled": False}):
        model = make_model(**overrides)
        ids = {id(p) for p in model.backbone_parameters()}
        assert len(ids) == len(model.backbone_parameters())
        assert {id(p) for p in model.body_backbone.parameters()} <= ids
        trunk = model.context.backbone if not model.config.gsam.enabled else model.context
        others = [*model.bam.parameters(), *model.lsam.parameters(), *model.classifier.parameters()]
        if model.config.gsam.enabled:
            others += list(trunk.branch.parameters())
            trunk_ids = {id(p) for p in [*trunk.extractor.parameters(), *trunk.perception.parameters()]}
        else:
            trunk_ids = {id(p) for p in trunk.parameters()}
        assert trunk_ids <= ids and not ids & {id(p) for p in others}
        resnet18 = sum(p.numel() for p in build_backbone(BackboneConfig("resnet18", False, None)).parameters())
        assert sum(p.numel() for p in model.backbone_parameters()) == 2 * resnet18


def test_without_lsam_the_model_does_not_read_patches():
    model = make_model(lsam__enabled=False).eval()
    assert model.views == ("body", "image_body_masked") and "patches" not in model.view_specs
    inputs = make_inputs(model)
    assert "patches" not in inputs
    with torch.no_grad():
        assert model(inputs).logits.shape == (BATCH, EMOTIC)


def test_input_errors_are_clear():
    model = make_model().eval()
    inputs = make_inputs(model)
    with pytest.raises(ValueError, match=r"\[.patches.\] missing"):
        model({k: v for k, v in inputs.items() if k != "patches"})
    with pytest.raises(ValueError, match=r"'body' must be \[B,3,H,W\]"):
        model({**inputs, "body": torch.randn(BATCH, 1, BODY, BODY)})
    with pytest.raises(ValueError, match=r"'patches' must be \[B,N\*N,3,s,s\]"):
        model({**inputs, "patches": inputs["patches"][:, 0]})
    with pytest.raises(ValueError, match="different batch sizes"):
        model({**inputs, "image_body_masked": inputs["image_body_masked"][:1]})
    with pytest.raises(TypeError, match="mapping"):
        model(list(inputs.values()))
    with pytest.raises(ConfigError, match="task"):
        build_dagnet(make_cfg(), num_classes=EMOTIC, task="regression")


# --- config errors --------------------------------------------------------------------


@pytest.mark.parametrize("overrides,key", [
    ({"lsam__n": 0}, "model.dagnet.lsam.n"),
    ({"lsam__n": True}, "model.dagnet.lsam.n"),
    ({"loss__kind": "mse"}, "model.dagnet.loss.kind"),
    ({"loss__attention_weight": -1.0}, "model.dagnet.loss.attention_weight"),
    ({"views__patches": _DELETE}, "model.dagnet.views"),
    ({"views__face": {"size": 32, "norm": "imagenet"}}, "model.dagnet.views"),
    ({"views__body": {"size": 32, "norm": "nope"}}, "model.dagnet.views.body.norm"),
    ({"lsam__channels": []}, "model.dagnet.lsam.channels"),
    ({"lsam__gcn_dims": [16, 0]}, "model.dagnet.lsam.gcn_dims"),
    ({"lsam__adjacency_init": "random"}, "model.dagnet.lsam.adjacency_init"),
    ({"bam__hidden": 0}, "model.dagnet.bam.hidden"),
    ({"gsam__residual": "yes"}, "model.dagnet.gsam.residual"),
    ({"classifier_hidden": 0}, "model.dagnet.classifier_hidden"),
    ({"dropout": 1.0}, "model.dagnet.dropout"),
    ({"train": [1]}, "model.dagnet.train"),
    ({"context_backbone__name": "mobilenet_v2"}, "model.dagnet.context_backbone.name"),
    ({"lsam__fc_dim": _DELETE}, "model.dagnet.lsam.fc_dim"),
])
def test_config_errors_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        make_cfg(**overrides)


def test_a_non_resnet_context_trunk_is_fine_without_gsam():
    model = make_model(gsam__enabled=False, context_backbone__name="mobilenet_v2", lsam__enabled=False).eval()
    assert model.config.context_backbone.name == "mobilenet_v2" and copy.deepcopy(model.config) == model.config
    with torch.no_grad():
        assert model(make_inputs(model)).logits.shape == (BATCH, EMOTIC)
