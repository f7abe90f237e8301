"""BENet (models/benet.py, models/benet_heads.py, models/benet_losses.py, models/benet_config.py):
the losses against hand computations, the centre targets, decoding and reading the emotion maps,
the output shapes at both resolutions, the routing of images to heads, one optimiser step, and
the config's rules. Tiny tensors and a 64 x 64 input throughout."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from models.benet import (
    BENet,
    BENetOutput,
    build_benet,
    build_benet_criterion,
    decode_detections,
    head_ids,
)
from models.benet_config import HEADS, BENetConfig
from models.benet_losses import (
    box_sizes,
    centre_cells,
    centre_focal_loss,
    emotion_focal_loss,
    gaussian_radius,
    read_emotions,
    render_centres,
)
from models.config import ConfigError, from_dict

torch.set_num_threads(1)
SIZE, E = 64, 5
SECTION = {
    "views": {"image": {"size": SIZE, "norm": "imagenet"}},
    "backbone": {"name": "resnet18", "pretrained": False, "weights": None},
    "pyramid_channels": 16,
    "attention": True,
    "dense": {"blocks": 1, "deconv_channels": 8, "deconv_kernel": 4},
    "classifier": {"channels": [8, 8, 16, 16], "final_channels": 32, "hidden": 16},
    "centre_prior": 0.1,
    "loss": {"centre_alpha": 2.0, "centre_beta": 4.0, "centre_weight": 1.0, "size_weight": 0.1, "emotion_gamma": 2.0,
             "bottom_up_weight": 1.0, "person_weight": 1.0, "background_weight": 1.0, "min_overlap": 0.7},
    "decode": {"resolution": "both", "top_k": 5, "threshold": 0.0, "nms_kernel": 3},
    "pre_transforms": {"probabilities": {"extract_subject": 0.25, "mask_all_subjects": 0.25,
                                         "random_mask_subjects": 0.25, "raw": 0.25},
                       "contain_overlap": 0.5, "max_masked_area": 0.4, "mask_probability": 0.5},
    "train": {"optimizer": "adam", "lr": 0.001},
}


def make_cfg(**changes) -> BENetConfig:
    data = copy.deepcopy(SECTION)
    for dotted, value in changes.items():
        *path, last = dotted.split("__")
        node = data
        for key in path:
            node = node[key]
        node[last] = value
    return from_dict(BENetConfig, data, "model.benet")


@pytest.fixture(scope="module")
def model() -> BENet:
    torch.manual_seed(0)
    return build_benet(make_cfg(), num_classes=E, task="multilabel", load_pretrained=False)


def fake_output(**maps) -> BENetOutput:
    rows = {name: torch.zeros(0, dtype=torch.long) for name in HEADS}
    rows.update(maps.pop("rows", {}))
    fields = {"logits": None, "attention": None, "continuous": None, "auxiliary": None, "centre": None,
              "size": None, "emotions": None, "person": None, "background": None, "rows": rows,
              "image_size": (SIZE, SIZE)}
    fields.update(maps)
    return BENetOutput(**fields)


def logit(p: float) -> float:
    return math.log(p / (1 - p))


# --- losses against hand computations ---------------------------------------------------------------

def test_the_centre_focal_loss_equals_eq1_by_hand_on_a_4x4_map():
    target = torch.zeros(4, 4)
    target[1, 1] = target[3, 3] = 1.0  # two people
    target[1, 2] = target[2, 1] = 0.5  # Gaussian tails
    p = torch.full((4, 4), 0.1, dtype=torch.float64)
    p[1, 1], p[3, 3], p[1, 2], p[2, 1] = 0.8, 0.6, 0.4, 0.2
    logits = torch.log(p / (1 - p))
    got = centre_focal_loss(logits, target.double(), num_people=2, alpha=2.0, beta=4.0)
    positives = (1 - 0.8) ** 2 * math.log(0.8) + (1 - 0.6) ** 2 * math.log(0.6)
    tails = (1 - 0.5) ** 4 * 0.4 ** 2 * math.log(1 - 0.4) + (1 - 0.5) ** 4 * 0.2 ** 2 * math.log(1 - 0.2)
    background = 12 * (1 - 0.0) ** 4 * 0.1 ** 2 * math.log(1 - 0.1)  # the 12 other cells
    expected = -(positives + tails + background) / 2
    assert expected == pytest.approx(0.0544835, abs=1e-6)
    assert float(got) == pytest.approx(expected, rel=1e-9)
    # normalised by the number of people, not by the number of cells at 1
    assert float(centre_focal_loss(logits, target.double(), 4, 2.0, 4.0)) == pytest.approx(expected / 2, rel=1e-9)


def test_the_multilabel_focal_loss_equals_eq5_by_hand_on_2x3_logits():
    x = [[2.0, -1.0, 0.0], [0.5, -3.0, 1.0]]
    y = [[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]]
    s = [[1 / (1 + math.exp(-v)) for v in row] for row in x]
    hand = ((1 - s[0][0]) ** 2 * math.log(s[0][0])      # person 1, emotion 1 present
            + s[0][1] ** 2 * math.log(1 - s[0][1])      # emotion 2 absent
            + (1 - s[0][2]) ** 2 * math.log(s[0][2])    # emotion 3 present
            + s[1][0] ** 2 * math.log(1 - s[1][0])      # person 2
            + s[1][1] ** 2 * math.log(1 - s[1][1])
            + (1 - s[1][2]) ** 2 * math.log(s[1][2]))
    got = emotion_focal_loss(torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64), 2.0)
    assert float(got) == pytest.approx(-hand / 2, rel=1e-9)
    assert float(got) == pytest.approx(0.29896, abs=1e-5)  # 0.59793 / 2


def test_the_size_term_is_a_tenth_of_the_l1_by_hand(model):
    boxes = torch.tensor([[[8.0, 8.0, 40.0, 56.0], [40.0, 0.0, 60.0, 20.0]]])
    quarter, half = torch.zeros(1, 2, 16, 16), torch.zeros(1, 2, 32, 32)
    # person 1: centre (24, 32) -> quarter cell (row 8, col 6), size (32, 48) / 4 = (8, 12); half cell (16, 12), (16, 24)
    quarter[0, :, 8, 6] = torch.tensor([5.0, 14.0])    # |5 - 8| + |14 - 12| = 5
    half[0, :, 16, 12] = torch.tensor([20.0, 20.0])    # |20 - 16| + |20 - 24| = 8
    # person 2: centre (50, 10) -> quarter cell (2, 12), size (5, 5); half cell (5, 25), size (10, 10)
    quarter[0, :, 2, 12] = torch.tensor([5.0, 7.0])    # 0 + 2 = 2
    half[0, :, 5, 25] = torch.tensor([10.0, 10.0])     # 0
    output = fake_output(centre=(torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 32, 32)), size=(quarter, half),
                         rows={"detection": torch.tensor([0])})
    batch = {"head": head_ids(["detection"]), "boxes": boxes, "labels": torch.zeros(1, 2, E),
             "num_people": torch.tensor([2])}
    terms = build_benet_criterion(make_cfg(), task="multilabel").terms(output, batch)
    assert float(terms["size_quarter"]) == pytest.approx(0.1 * (5 + 2) / 2)
    assert float(terms["size_half"]) == pytest.approx(0.1 * (8 + 0) / 2)
    assert set(terms) == {"centre_quarter", "size_quarter", "centre_half", "size_half"}


def test_the_centre_target_is_1_at_the_centre_cell_only_with_the_radius_gaussian():
    box = torch.tensor([[8.0, 8.0, 48.0, 48.0]])  # centre (28, 28): cell (7, 7) at stride 4; 10 x 10 map pixels
    target = render_centres(box, (4.0, 4.0), (16, 16), 0.7)
    assert target[7, 7] == 1.0 and int((target == 1).sum()) == 1
    # r: (10 - r)^2 / (200 - (10 - r)^2) = 0.7 exactly
    r = float(gaussian_radius(torch.tensor(10.0), torch.tensor(10.0), 0.7))
    assert (10 - r) ** 2 / (200 - (10 - r) ** 2) == pytest.approx(0.7)
    sigma = (2 * r + 1) / 6
    assert float(target[7, 8]) == pytest.approx(math.exp(-1 / (2 * sigma ** 2)), rel=1e-5)
    assert float(target[5, 6]) == pytest.approx(math.exp(-5 / (2 * sigma ** 2)), rel=1e-4)


# --- decoding and reading ----------------------------------------------------------------------------

def test_a_gaussian_peak_with_known_sizes_decodes_to_its_box():
    rows, cols = torch.arange(16.0)[:, None], torch.arange(16.0)[None, :]
    scores = torch.exp(-((rows - 5) ** 2 + (cols - 9) ** 2) / (2 * 1.5 ** 2))        # peak 1 at (5, 9)
    scores = scores + 0.3 * torch.exp(-((rows - 12) ** 2 + (cols - 2) ** 2) / 2)    # a weak one at (12, 2)
    sizes = torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(0)) * 3
    sizes[:, 5, 9] = torch.tensor([6.0, 10.0])  # w, h in map pixels
    found = decode_detections(scores[None, None], sizes[None], (4.0, 4.0), top_k=3, threshold=0.5)
    boxes, kept = found[0]
    # centre ((9 + 0.5) * 4, (5 + 0.5) * 4) = (38, 22); size (24, 40)
    assert torch.allclose(boxes, torch.tensor([[26.0, 2.0, 50.0, 42.0]])) and torch.allclose(kept, torch.tensor([1.0]))
    # and that box encodes back to the same cell and sizes
    assert [int(v) for v in centre_cells(boxes, (4.0, 4.0), (16, 16))] == [5, 9]
    assert torch.allclose(box_sizes(boxes, (4.0, 4.0)), torch.tensor([[6.0, 10.0]]))
    low = decode_detections(scores[None, None], sizes[None], (4.0, 4.0), top_k=3, threshold=0.2)[0]
    assert low[0].shape == (2, 4) and float(low[1][1]) == pytest.approx(0.3, abs=1e-3)


def test_read_emotions_reads_exactly_the_centre_cell():
    maps = torch.arange(3 * 16 * 16, dtype=torch.float32).reshape(3, 16, 16)
    boxes = torch.tensor([[8.0, 8.0, 16.0, 24.0],    # centre (12, 16): on cell edges -> cell (4, 3)
                          [12.0, 0.0, 15.8, 7.98],   # centre (13.9, 3.99) -> cell (0, 3)
                          [60.0, 60.0, 90.0, 90.0]])  # centre (75, 75) off the map -> clamped (15, 15)
    got = read_emotions(maps, boxes, (4.0, 4.0))
    assert got.shape == (3, 3)
    assert torch.equal(got, torch.stack([maps[:, 4, 3], maps[:, 0, 3], maps[:, 15, 15]]))


def test_both_resolutions_decode_from_the_mean_of_the_half_and_the_upsampled_quarter_maps(model):
    from models.benet import _decoding_maps

    output = fake_output(centre=(torch.zeros(1, 1, 16, 16), torch.full((1, 1, 32, 32), logit(0.9))),
                         size=(torch.full((1, 2, 16, 16), 3.0), torch.full((1, 2, 32, 32), 4.0)),
                         rows={"detection": torch.tensor([0])})
    scores, sizes = _decoding_maps(output, "both")
    assert scores.shape == (1, 1, 32, 32) and torch.allclose(scores, torch.full_like(scores, (0.5 + 0.9) / 2))
    assert torch.allclose(sizes, torch.full_like(sizes, (3.0 * 2 + 4.0) / 2))  # quarter sizes doubled to 1/2 pixels


# --- the network -------------------------------------------------------------------------------------

def test_every_head_gives_its_maps_at_both_resolutions_for_a_64x64_image(model):
    images = torch.randn(2, 3, SIZE, SIZE)
    box = torch.tensor([[8.0, 8.0, 40.0, 56.0], [0.0, 0.0, 64.0, 64.0]])
    with torch.no_grad():
        out = model.eval()({"image": images, "person_box": box})
    assert [tuple(m.shape) for m in out.centre] == [(2, 1, 16, 16), (2, 1, 32, 32)]
    assert [tuple(m.shape) for m in out.size] == [(2, 2, 16, 16), (2, 2, 32, 32)]
    assert [tuple(m.shape) for m in out.emotions] == [(2, E, 16, 16), (2, E, 32, 32)]
    assert out.person.shape == (2, E) and out.background.shape == (2, E) and out.image_size == (SIZE, SIZE)
    # logits: the mean of the two maps at the person's centre cell
    first = (out.emotions[0][0, :, 8, 6] + out.emotions[1][0, :, 16, 12]) / 2
    assert torch.allclose(out.logits[0], first) and out.logits.shape == (2, E)
    detections = model.detect(out)
    assert len(detections) == 2 and detections[0][0].shape == (5, 4)
    assert torch.allclose(model.emotions_at(out, [box[:1], box[1:]])[0][0], first)


def test_routed_images_reach_their_head_only(model):
    images = torch.randn(5, 3, SIZE, SIZE)
    head = head_ids(["person", "detection", "person", "background", "detection"])
    with torch.no_grad():
        out = model.eval()({"image": images, "head": head})
    assert out.rows["detection"].tolist() == [1, 4] and out.rows["person"].tolist() == [0, 2]
    assert out.centre[0].shape[0] == 2 and out.person.shape == (2, E) and out.background.shape == (1, E)
    assert out.emotions is None and out.logits is None
    with torch.no_grad():  # a routed row sees what it would see alone (eval mode: BN uses running statistics)
        alone = model({"image": images[2:3], "head": head_ids(["person"])})
    assert torch.allclose(out.person[1], alone.person[0], atol=1e-5)


def test_one_optimiser_step_is_finite_and_moves_every_head():
    torch.manual_seed(0)
    net = build_benet(make_cfg(), num_classes=E, task="multilabel", load_pretrained=False).train()
    criterion = build_benet_criterion(net.config, task="multilabel")
    head = head_ids(["detection", "bottom_up", "person", "background"])
    boxes = torch.tensor([[[8.0, 8.0, 40.0, 56.0], [40.0, 0.0, 60.0, 20.0]]]).repeat(4, 1, 1)
    labels = (torch.rand(4, 2, E, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    batch = {"head": head, "boxes": boxes, "labels": labels, "num_people": torch.tensor([2, 2, 1, 2])}
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
    before = {name: p.detach().clone() for name, p in net.named_parameters()}
    output = net({"image": torch.randn(4, 3, SIZE, SIZE), "head": head})
    terms = criterion.terms(output, batch)
    assert set(terms) == {"centre_quarter", "size_quarter", "centre_half", "size_half", "bottom_up_quarter",
                          "bottom_up_half", "person", "background"}
    loss = criterion(output, batch)
    assert loss.dim() == 0 and bool(torch.isfinite(loss))
    assert float(loss.detach()) == pytest.approx(sum(float(v.detach()) for v in terms.values()), rel=1e-5)
    optimiser.zero_grad()
    loss.backward()
    optimiser.step()
    for module in ("backbone", "detection", "bottom_up", "person", "background"):
        unchanged = [name for name, p in net.named_parameters()
                     if name.startswith(module + ".") and torch.equal(p.detach(), before[name])]
        assert unchanged == [], f"{module}: {unchanged}"


def test_the_loss_refuses_a_batch_routed_differently_from_the_model(model):
    output = fake_output(person=torch.zeros(1, E), rows={"person": torch.tensor([0])})
    batch = {"head": head_ids(["background"]), "boxes": torch.zeros(1, 1, 4), "labels": torch.zeros(1, 1, E),
             "num_people": torch.tensor([1])}
    with pytest.raises(ValueError, match="routes rows"):
        build_benet_criterion(make_cfg(), task="multilabel")(output, batch)


def test_the_background_target_is_the_union_of_the_subjects_labels():
    logits = torch.tensor([[3.0, -2.0, 0.5, 1.0, -1.0]])
    labels = torch.tensor([[[1.0, 0, 0, 0, 0], [0, 0, 1.0, 0, 0], [0, 0, 0, 1.0, 0]]])  # third row is padding
    output = fake_output(background=logits, rows={"background": torch.tensor([0])})
    batch = {"head": head_ids(["background"]), "boxes": torch.zeros(1, 3, 4), "labels": labels,
             "num_people": torch.tensor([2])}
    got = build_benet_criterion(make_cfg(), task="multilabel").terms(output, batch)["background"]
    expected = emotion_focal_loss(logits, torch.tensor([[1.0, 0, 1.0, 0, 0]]), 2.0)
    assert float(got) == pytest.approx(float(expected))


# --- config ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("changes,message", [
    ({"backbone__name": "mobilenet_v2"}, "backbone.name must be one of"),
    ({"decode__nms_kernel": 4}, "nms_kernel must be odd"),
    ({"classifier__channels": [8, 8, 16]}, "classifier.channels must be 4"),
    ({"pre_transforms__probabilities": {"extract_subject": 0.5, "mask_all_subjects": 0.25,
                                        "random_mask_subjects": 0.25, "raw": 0.25}}, "must sum to 1"),
    ({"pre_transforms__probabilities": {"extract_subject": 1.0}}, "must name exactly"),
    ({"loss__min_overlap": 1.0}, r"loss.min_overlap must be"),
    ({"dense__deconv_kernel": 5}, r"dense.deconv_kernel must be one of"),
])
def test_config_rules_name_the_key(changes, message):
    with pytest.raises(ConfigError, match=message):
        make_cfg(**changes)


def test_resnet50_pyramid_and_other_deconvolution_kernels_keep_the_two_resolutions():
    torch.manual_seed(0)
    for kernel in (2, 3):
        net = build_benet(make_cfg(dense__deconv_kernel=kernel, attention=False, classifier__hidden=None),
                          num_classes=E, task="multilabel", load_pretrained=False).eval()
        with torch.no_grad():
            out = net({"image": torch.randn(1, 3, 48, 40)})
        assert [tuple(m.shape[-2:]) for m in out.emotions] == [(12, 10), (24, 20)]
    wide = build_benet(make_cfg(backbone__name="resnet50"), num_classes=E, task="multilabel", load_pretrained=False)
    assert [layer.in_channels for layer in wide.backbone.lateral] == [256, 512, 1024, 2048]


def test_the_config_round_trips_through_a_plain_dict_as_checkpoints_store_it():
    from models.config import to_dict

    cfg = make_cfg()
    assert from_dict(BENetConfig, to_dict(cfg), "model.benet") == cfg
    torch.manual_seed(0)
    net = build_benet(cfg, num_classes=E, task="multilabel", load_pretrained=False).eval()
    again = build_benet(from_dict(BENetConfig, to_dict(cfg)), num_classes=E, task="multilabel", load_pretrained=False)
    again.load_state_dict(net.state_dict(), strict=True)
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again.eval()({"image": images}).emotions[1], net({"image": images}).emotions[1])
