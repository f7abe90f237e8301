"""BOA (eq. 1-5), ELD (eq. 6-8 with the thresholding and normalisation) and BPA in isolation, against hand computations."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from models.boa import (
    BodyObjectAttention,
    EqualObjectPooling,
    geometry_embedding,
    masked_softmax,
    relative_geometry,
)
from models.bpa import BodyPartAttention
from models.config import ConfigError
from models.eld import (
    EmotionLabelDependency,
    binary_adjacency,
    eld_adjacency,
    normalized_adjacency,
    reweighted_adjacency,
)

torch.set_num_threads(1)


def boa_inputs(batch=4, num_objects=7, seed=0):
    gen = torch.Generator().manual_seed(seed)
    body = torch.randn(batch, 2048, generator=gen)
    feats = torch.randn(batch, num_objects, 2048, generator=gen)
    corner = torch.rand(batch, num_objects, 2, generator=gen) * 300
    boxes = torch.cat([corner, corner + torch.rand(batch, num_objects, 2, generator=gen) * 80 + 2], -1)
    counts = torch.tensor([num_objects, 3, 1, 0])[:batch]
    mask = torch.arange(num_objects)[None, :] < counts[:, None]
    person = torch.tensor([[40.0, 50.0, 140.0, 330.0]]).repeat(batch, 1)
    return body, feats, boxes, mask, person


# --- BOA ------------------------------------------------------------------------------


def test_relative_geometry_matches_hand_computation():
    person = torch.tensor([[10.0, 20.0, 50.0, 100.0]])  # w_B 40, h_B 80
    objects = torch.tensor([[[30.0, 20.0, 50.0, 60.0],  # |dx| 20, dy 0, w 20, h 40
                             [10.0, 100.0, 90.0, 260.0]]])  # dx 0, |dy| 80, w 80, h 160
    expected = torch.log(torch.tensor([[[0.5, 1e-3, 0.5, 0.5],
                                        [1e-3, 1.0, 2.0, 2.0]]]))
    assert torch.allclose(relative_geometry(objects, person), expected)
    degenerate = relative_geometry(objects, torch.tensor([[10.0, 20.0, 10.0, 20.0]]))
    assert torch.isfinite(degenerate).all()


def test_geometry_embedding_matches_relation_networks_formula():
    g = torch.tensor([[0.01, -0.02, 0.003, 0.5]])
    # dim 16: two wavelengths per coordinate, 1000^(0/16*8)=1 and 1000^(8/16)=sqrt(1000)
    emb = geometry_embedding(g, 16)
    assert emb.shape == (1, 16)
    first = [100 * 0.01, 100 * 0.01 / math.sqrt(1000)]
    assert torch.allclose(emb[0, :4], torch.tensor([math.sin(first[0]), math.sin(first[1]),
                                                     math.cos(first[0]), math.cos(first[1])]))
    last = [100 * 0.5, 100 * 0.5 / math.sqrt(1000)]
    assert torch.allclose(emb[0, 12:], torch.tensor([math.sin(last[0]), math.sin(last[1]),
                                                     math.cos(last[0]), math.cos(last[1])]))
    with pytest.raises(ConfigError, match="multiple of 8"):
        geometry_embedding(g, 12)


def test_attention_weights_follow_equations_2_to_4():
    torch.manual_seed(0)
    boa = BodyObjectAttention(heads=1, dim=8, geometry=True, geometry_dim=16)
    body, feats, boxes, mask, person = boa_inputs()
    weights = boa.attention_weights(body, feats, boxes, mask, person)

    b, valid = 1, slice(0, 3)
    appearance = (boa.object_key(feats[b, valid]) @ boa.body_query(body[b])) / math.sqrt(8)
    embedding = geometry_embedding(relative_geometry(boxes[b:b + 1, valid], person[b:b + 1])[0], 16)
    gate = torch.relu(boa.geometry_gate(embedding)[:, 0]).clamp(min=1e-6)
    expected = gate * torch.exp(appearance) / (gate * torch.exp(appearance)).sum()
    assert torch.allclose(weights[b, 0, valid], expected, atol=1e-6)


def test_weights_sum_to_one_on_valid_objects_and_are_exactly_zero_on_padding():
    torch.manual_seed(0)
    boa = BodyObjectAttention(heads=4, dim=16, geometry=True)
    body, feats, boxes, mask, person = boa_inputs()
    context, weights = boa(body, feats, boxes, mask, person)
    assert weights.shape == (4, 4, 7)
    sums = weights.sum(dim=-1)
    assert torch.allclose(sums[:3], torch.ones(3, 4), atol=1e-6)
    assert torch.equal(sums[3], torch.zeros(4))
    padding = ~mask[:, None, :].expand_as(weights)
    assert torch.equal(weights[padding], torch.zeros(int(padding.sum())))
    assert (weights[~padding] >= 0).all()


def test_no_valid_object_gives_zero_context_and_finite_gradients():
    torch.manual_seed(0)
    boa = BodyObjectAttention(heads=2, dim=16, geometry=True)
    body, feats, boxes, mask, person = boa_inputs()
    feats = feats.clone()
    feats[~mask] = float("nan")
    body.requires_grad_(True)
    context, weights = boa(body, feats, boxes, mask, person)
    assert torch.equal(context[3], torch.zeros(2048))
    assert torch.isfinite(context).all() and torch.isfinite(weights).all()
    context.sum().backward()
    assert torch.isfinite(body.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in boa.parameters())


def test_masked_softmax_rows():
    logits = torch.tensor([[[1.0, 2.0, 3.0]], [[5.0, 0.0, 1.0]]])
    mask = torch.tensor([[True, False, True], [False, False, False]])
    out = masked_softmax(logits, mask)
    e1, e3 = math.exp(1.0), math.exp(3.0)
    assert torch.allclose(out[0, 0], torch.tensor([e1 / (e1 + e3), 0.0, e3 / (e1 + e3)]))
    assert torch.equal(out[1], torch.zeros(1, 3))


@pytest.mark.parametrize("geometry", [True, False])
def test_boa_is_invariant_to_object_order(geometry):
    torch.manual_seed(0)
    boa = BodyObjectAttention(heads=3, dim=16, geometry=geometry)
    body, feats, boxes, mask, person = boa_inputs()
    order = torch.tensor([4, 0, 6, 2, 1, 5, 3])
    context, weights = boa(body, feats, boxes, mask, person)
    context_p, weights_p = boa(body, feats[:, order], boxes[:, order], mask[:, order], person)
    assert torch.allclose(context, context_p, atol=1e-5)
    assert torch.allclose(weights[:, :, order], weights_p, atol=1e-6)


def test_geometry_off_creates_no_geometry_parameters():
    with_geometry = BodyObjectAttention(heads=3, dim=16, geometry=True, geometry_dim=64)
    without = BodyObjectAttention(heads=3, dim=16, geometry=False)
    names = {n for n, _ in without.named_parameters()}
    assert names == {"object_key.weight", "object_key.bias", "body_query.weight",
                     "body_query.bias", "output_proj.weight"}
    extra = {n: p.shape for n, p in with_geometry.named_parameters() if n not in names}
    assert extra == {"geometry_gate.weight": (3, 64), "geometry_gate.bias": (3,)}
    body, feats, boxes, mask, person = boa_inputs()
    a = without.attention_weights(body, feats, boxes, mask, person)
    b = without.attention_weights(body, feats, boxes * 3 + 7, mask, person / 2)
    assert torch.equal(a, b)


def test_output_projection_sizes_and_head_concatenation():
    torch.manual_seed(0)
    boa = BodyObjectAttention(heads=3, dim=16, geometry=True)
    assert boa.output_proj.weight.shape == (2048, 3 * 2048) and boa.output_proj.bias is None
    body, feats, boxes, mask, person = boa_inputs()
    context, weights = boa(body, feats, boxes, mask, person)
    heads = torch.einsum("hn,nf->hf", weights[0], feats[0])  # each head: sum_m w O_A
    assert torch.allclose(context[0], boa.output_proj.weight @ heads.flatten(), atol=1e-4)


def test_a_per_head_value_projection_projects_each_heads_pooled_objects_before_w3():
    torch.manual_seed(0)
    boa = BodyObjectAttention(heads=3, dim=16, geometry=True, value_dim=8)
    assert boa.value_proj.shape == (3, 2048, 8) and boa.output_proj.weight.shape == (2048, 3 * 8)
    body, feats, boxes, mask, person = boa_inputs()
    context, weights = boa(body, feats, boxes, mask, person)
    # by hand: head k pools sum_m w^{km} (V_k O_A^m), i.e. projects every object, then W3 on the concatenation
    valid = feats[0] * mask[0, :, None]
    heads = torch.stack([weights[0, k] @ (valid @ boa.value_proj[k]) for k in range(3)])
    assert torch.allclose(context[0], boa.output_proj.weight @ heads.flatten(), atol=1e-4)
    assert torch.equal(context[3], torch.zeros(2048))  # no valid object: still exactly 0
    paper = BodyObjectAttention(heads=16, dim=128, geometry=True)
    projected = BodyObjectAttention(heads=16, dim=128, geometry=True, value_dim=128)
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert count(paper) - count(projected) == 16 * 2048 * 2048 - (16 * 2048 * 128 + 16 * 128 * 2048)


def test_equal_pooling_is_the_mean_of_valid_objects():
    torch.manual_seed(0)
    pool = EqualObjectPooling()
    body, feats, boxes, mask, person = boa_inputs()
    context, weights = pool(body, feats, boxes, mask, person)
    assert weights is None
    assert torch.allclose(context[1], pool.output_proj(feats[1, :3].mean(0)), atol=1e-5)
    assert torch.equal(context[3], torch.zeros(2048))


# --- ELD ------------------------------------------------------------------------------

P_HAND = torch.tensor([
    [0.00, 0.50, 0.10, 0.30],
    [0.40, 0.00, 0.20, 0.00],
    [0.10, 0.10, 0.00, 0.10],  # no entry >= 0.2: a class without neighbours
    [0.25, 0.60, 0.05, 0.00],
])


def test_thresholded_adjacency_by_hand():
    expected = torch.tensor([
        [0.0, 1.0, 0.0, 1.0],
        [1.0, 0.0, 1.0, 0.0],  # 0.20 >= t counts
        [0.0, 0.0, 0.0, 0.0],
        [1.0, 1.0, 0.0, 0.0],
    ])
    assert torch.equal(binary_adjacency(P_HAND, 0.2), expected)


def test_eq7_reweighted_adjacency_by_hand():
    expected = torch.tensor([
        [0.8, 0.1, 0.0, 0.1],
        [0.1, 0.8, 0.1, 0.0],
        [0.0, 0.0, 1.0, 0.0],  # no neighbour: all weight on itself
        [0.1, 0.1, 0.0, 0.8],
    ])
    assert torch.allclose(reweighted_adjacency(P_HAND, 0.2, 0.2), expected)
    expected_t03_p06 = torch.tensor([
        [0.4, 0.3, 0.0, 0.3],
        [0.6, 0.4, 0.0, 0.0],
        [0.0, 0.0, 1.0, 0.0],
        [0.0, 0.6, 0.0, 0.4],
    ])
    assert torch.allclose(reweighted_adjacency(P_HAND, 0.3, 0.6), expected_t03_p06)
    # the normalisation on rows that sum to 1: D = I, so Â = A^r (row-stochastic, not symmetric)
    assert torch.allclose(eld_adjacency(P_HAND, 0.2, 0.2), expected)
    assert torch.allclose(eld_adjacency(P_HAND, 0.2, 0.2).sum(dim=1), torch.ones(4))
    assert not torch.allclose(eld_adjacency(P_HAND, 0.2, 0.2), eld_adjacency(P_HAND, 0.2, 0.2).T)
    with pytest.raises(ConfigError, match=r"model.rrla.eld.p must lie in \[0, 1\]"):
        reweighted_adjacency(P_HAND, 0.2, 1.5)


def test_degree_normalisation_by_hand():
    a_r = torch.tensor([[1.0, 1.0, 0.0], [1.0, 3.0, 0.0], [0.0, 0.0, 0.0]])  # degrees 2, 4, 0
    expected = torch.tensor([
        [0.5, 0.35355339, 0.0],
        [0.35355339, 0.75, 0.0],
        [0.0, 0.0, 0.0],
    ])
    assert torch.allclose(normalized_adjacency(a_r), expected)


def test_eld_buffers_and_changing_t_p_without_recomputing_p():
    torch.manual_seed(0)
    embeddings = torch.randn(4, 6)
    eld = EmotionLabelDependency(P_HAND, embeddings, t=0.2, p=0.2, hidden=8, feature_dim=12)
    assert set(dict(eld.named_buffers())) == {"cooccurrence", "label_embeddings", "adjacency"}
    stored = eld.cooccurrence.data_ptr()
    eld.set_edge_params(0.3, 0.6)
    assert eld.cooccurrence.data_ptr() == stored and torch.equal(eld.cooccurrence, P_HAND)
    assert torch.allclose(eld.adjacency, reweighted_adjacency(P_HAND, 0.3, 0.6))
    assert (eld.t, eld.p) == (0.3, 0.6)


def test_eld_scores_are_per_class_dot_products_with_gcn_classifiers():
    torch.manual_seed(0)
    embeddings = torch.randn(4, 6)
    eld = EmotionLabelDependency(P_HAND.numpy(), embeddings.numpy(), t=0.2, p=0.2, hidden=8, feature_dim=12,
                                 scaled=False)
    assert eld.gcn1.weight.shape == (8, 6) and eld.gcn2.weight.shape == (12, 8)
    features = torch.randn(5, 12)
    a_hat = eld_adjacency(P_HAND, 0.2, 0.2)
    h1 = F.leaky_relu(a_hat @ embeddings @ eld.gcn1.weight.T, negative_slope=0.2)
    h2 = a_hat @ h1 @ eld.gcn2.weight.T  # [C, 12]
    expected = torch.stack([features @ h2[c] for c in range(4)], dim=1)
    assert torch.allclose(eld(features), expected, atol=1e-5)
    scaled = EmotionLabelDependency(P_HAND.numpy(), embeddings.numpy(), t=0.2, p=0.2, hidden=8, feature_dim=12)
    scaled.load_state_dict(eld.state_dict())
    assert torch.allclose(scaled(features), expected / 12 ** 0.5, atol=1e-5)
    eld(features).sum().backward()
    assert eld.gcn1.weight.grad.abs().sum() > 0 and eld.gcn2.weight.grad.abs().sum() > 0


def _hand_classifiers(eld, embeddings, adjacency, every_layer):
    h1 = F.leaky_relu(adjacency @ embeddings @ eld.gcn1.weight.T, negative_slope=0.2)
    h2 = adjacency @ h1 @ eld.gcn2.weight.T
    return F.leaky_relu(h2, negative_slope=0.2) if every_layer else h2


@pytest.mark.parametrize("propagation", ["as_written", "transposed"])
@pytest.mark.parametrize("activation", ["between_layers", "every_layer"])
def test_eld_propagation_and_activation_readings_by_hand(propagation, activation):
    # as_written: Â (class i reads the j with P(j|i) >= t); transposed: Âᵀ, ML-GCN's gen_adj.
    # every_layer: σ on H^(2) as eq. 6 writes; between_layers: ML-GCN's σ between layers only.
    torch.manual_seed(0)
    embeddings = torch.randn(4, 6)
    default = EmotionLabelDependency(P_HAND, embeddings, t=0.2, p=0.2, hidden=8, feature_dim=12, scaled=False)
    switched = EmotionLabelDependency(P_HAND, embeddings, t=0.2, p=0.2, hidden=8, feature_dim=12, scaled=False,
                                      propagation=propagation, activation=activation)
    # neither switch adds, drops or reshapes a parameter or buffer: the default's state loads strictly
    missing, unexpected = switched.load_state_dict(default.state_dict(), strict=True)
    assert missing == [] and unexpected == []
    assert torch.equal(switched.adjacency, eld_adjacency(P_HAND, 0.2, 0.2))  # the buffer is Â either way
    a_hat = eld_adjacency(P_HAND, 0.2, 0.2)
    applied = a_hat if propagation == "as_written" else a_hat.T
    expected = _hand_classifiers(default, embeddings, applied, activation == "every_layer")
    assert torch.allclose(switched.classifiers(), expected, atol=1e-6)
    features = torch.randn(3, 12)
    assert torch.allclose(switched(features), features @ expected.T, atol=1e-5)
    if (propagation, activation) != ("as_written", "between_layers"):
        assert not torch.allclose(switched.classifiers(), default.classifiers(), atol=1e-4)
    switched.set_edge_params(0.3, 0.6)  # t, p changes keep the reading
    a_hat = eld_adjacency(P_HAND, 0.3, 0.6)
    applied = a_hat if propagation == "as_written" else a_hat.T
    assert torch.allclose(switched.classifiers(),
                          _hand_classifiers(default, embeddings, applied, activation == "every_layer"), atol=1e-6)


@pytest.mark.parametrize("activation", ["between_layers", "every_layer"])
def test_eld_without_the_graph_is_the_identity_adjacency_by_hand(activation):
    # `ctxemo report`'s "without ELD" column: the trained weights with Â replaced by I
    torch.manual_seed(0)
    embeddings = torch.randn(4, 6)
    eld = EmotionLabelDependency(P_HAND, embeddings, t=0.2, p=0.2, hidden=8, feature_dim=12, activation=activation)
    h1 = F.leaky_relu(embeddings @ eld.gcn1.weight.T, negative_slope=0.2)  # each class from its own z_c only
    h2 = h1 @ eld.gcn2.weight.T
    expected = F.leaky_relu(h2, negative_slope=0.2) if activation == "every_layer" else h2
    assert torch.allclose(eld.graph_free_classifiers(), expected, atol=1e-6)
    features = torch.randn(3, 12)
    assert torch.allclose(eld.graph_free_scores(features), features @ expected.T / 12 ** 0.5, atol=1e-5)
    assert not torch.allclose(eld.graph_free_scores(features), eld(features), atol=1e-4)  # the graph mixes classes
    # class 2 has no neighbour: Â's row 2 is e_2, so its classifier reads only its own embedding either way
    assert torch.allclose(eld.graph_free_classifiers()[2], eld.classifiers()[2], atol=1e-6)
    eld.set_edge_params(0.2, 0.0)  # p = 0: Â = I, nothing to remove
    assert torch.allclose(eld.graph_free_scores(features), eld(features), atol=1e-6)


def test_eld_refuses_unknown_readings():
    with pytest.raises(ConfigError, match="model.rrla.eld.propagation must be one of"):
        EmotionLabelDependency(P_HAND, torch.zeros(4, 3), 0.2, 0.2, propagation="symmetric")
    with pytest.raises(ConfigError, match="model.rrla.eld.activation must be one of"):
        EmotionLabelDependency(P_HAND, torch.zeros(4, 3), 0.2, 0.2, activation="relu")


def test_eld_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="square"):
        EmotionLabelDependency(np.zeros((3, 4)), np.zeros((3, 5)), 0.2, 0.2)
    with pytest.raises(ValueError, match=r"\[C,d_z\] with C = 3"):
        EmotionLabelDependency(np.zeros((3, 3)), np.zeros((4, 5)), 0.2, 0.2)
    with pytest.raises(ValueError, match="NaN"):
        EmotionLabelDependency(np.full((3, 3), np.nan), np.zeros((3, 5)), 0.2, 0.2)


# --- BPA ------------------------------------------------------------------------------


def test_bpa_is_squeeze_and_excitation_with_the_hidden_width_as_parameter():
    torch.manual_seed(0)
    bpa = BodyPartAttention(channels=512, hidden=32)
    assert bpa.squeeze.weight.shape == (32, 512) and bpa.excite.weight.shape == (512, 32)
    feature_map = torch.randn(2, 512, 3, 3)
    gates = torch.sigmoid(bpa.excite(torch.relu(bpa.squeeze(feature_map.mean(dim=(2, 3))))))
    assert ((gates > 0) & (gates < 1)).all()
    assert torch.allclose(bpa(feature_map), feature_map * gates[:, :, None, None])
    assert BodyPartAttention(channels=2048, hidden=7).squeeze.weight.shape == (7, 2048)
    with pytest.raises(ConfigError, match="model.rrla.bpa.hidden"):
        BodyPartAttention(channels=512, hidden=0)
