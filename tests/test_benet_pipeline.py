"""BENet through the pipeline: the image-level training set (core/data/image_dataset.py), the person box
in view pixels of the person-level item, one EpochLoop epoch on tiny generated data, BENet's own people
(core/bottom_up.py) and `Predictor.predict` without boxes. Tiny sizes (64 x 64 input) throughout."""
from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from test_benet import SECTION

from core.data.dataset import PersonDataset, model_inputs
from core.data.image_dataset import EpochSampler, ImageDataset, group_by_image
from core.data.subject_transforms import SubjectPreTransforms
from core.errors import UserError
from models.benet_config import HEADS
from models.config import ViewSpec

torch.set_num_threads(1)
E, SIZE = 5, 64
SPEC = ViewSpec(size=SIZE, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
ALL_ON = {"extract_subject": 0.0, "mask_all_subjects": 0.0, "random_mask_subjects": 0.0, "raw": 0.0}


def pre(name: str) -> SubjectPreTransforms:
    return SubjectPreTransforms({**ALL_ON, name: 1.0}, contain_overlap=0.5, max_masked_area=0.4, mask_probability=0.5)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """a.png 40 wide x 20 high with two people, b.png 32 x 32 with one; labels multi-hot of 5 classes."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (20, 40, 3), dtype=np.uint8)).save(root / "a.png")
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / "b.png")
    manifest = pd.DataFrame({
        "sample_id": ["a#0", "b#0", "a#1"], "image_path": ["a.png", "b.png", "a.png"],
        "person_box": [[4.0, 2.0, 12.0, 10.0], [8.0, 8.0, 24.0, 30.0], [24.0, 10.0, 32.0, 18.0]],
        "labels": [[0, 2], [1], [4]]})
    return root, manifest


def image_set(photos, name: str, task: str = "multilabel") -> ImageDataset:
    root, manifest = photos
    return ImageDataset(manifest, root, num_classes=E, task=task, view_spec=SPEC, pre_transforms=pre(name), seed=3)


def test_the_image_dataset_groups_people_by_image_and_pads_to_the_most_people(photos):
    assert group_by_image(["a", "b", "a", "c"]) == (["a", "b", "c"], [[0, 2], [1], [3]])
    data = image_set(photos, "raw")
    assert len(data) == 2 and data.max_people == 2 and data.rows == [[0, 2], [1]]
    item = data[0]  # a.png, raw: the detection head, both people in 64 x 64 pixels (x * 64/40, y * 64/20)
    assert item["image"].shape == (3, SIZE, SIZE) and int(item["head"]) == HEADS.index("detection")
    assert int(item["num_people"]) == 2 and int(item["index"]) == 0
    np.testing.assert_allclose(item["boxes"].numpy(), [[6.4, 6.4, 19.2, 32.0], [38.4, 32.0, 51.2, 57.6]], rtol=1e-6)
    np.testing.assert_array_equal(item["labels"].numpy(), [[1, 0, 1, 0, 0], [0, 0, 0, 0, 1]])
    other = data[1]  # b.png: one person, one zero row of padding
    assert int(other["num_people"]) == 1 and other["boxes"].shape == (2, 4) and other["labels"].shape == (2, E)
    np.testing.assert_allclose(other["boxes"].numpy(), [[16.0, 16.0, 48.0, 60.0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(other["labels"].numpy(), [[0, 1, 0, 0, 0], [0, 0, 0, 0, 0]])
    # the pixels are the photo's, resized as the image view (mean 0, std 1: values / 255)
    photo = np.asarray(Image.open(photos[0] / "a.png").resize((SIZE, SIZE), Image.BILINEAR), np.float32) / 255
    np.testing.assert_allclose(item["image"].numpy(), photo.transpose(2, 0, 1), atol=1e-6)


def test_each_head_gets_its_targets(photos):
    # extract_subject: the subject drawn first from the (seed, epoch, index) generator, its crop's extent
    item = image_set(photos, "extract_subject")[(4, 0)]
    subject = int(np.random.default_rng([3, 4, 0]).integers(2))
    assert int(item["head"]) == HEADS.index("person") and int(item["num_people"]) == 1
    np.testing.assert_allclose(item["boxes"][0].numpy(), [0, 0, SIZE, SIZE])
    np.testing.assert_array_equal(item["labels"][0].numpy(), [[1, 0, 1, 0, 0], [0, 0, 0, 0, 1]][subject])
    # mask_all_subjects: 64 + 64 of 800 pixels masked (<= 0.4): the whole image, the union of the labels
    item = image_set(photos, "mask_all_subjects")[0]
    assert int(item["head"]) == HEADS.index("background") and int(item["num_people"]) == 1
    np.testing.assert_allclose(item["boxes"][0].numpy(), [0, 0, SIZE, SIZE])
    np.testing.assert_array_equal(item["labels"][0].numpy(), [1, 0, 1, 0, 1])
    # random_mask_subjects: the bottom-up head, the kept people only (one or both)
    item = image_set(photos, "random_mask_subjects")[0]
    assert int(item["head"]) == HEADS.index("bottom_up") and int(item["num_people"]) in (1, 2)
    # a single-label data set trains on one-hot rows
    item = image_set(photos, "raw", task="multiclass")[0]
    np.testing.assert_array_equal(item["labels"].numpy(), [[1, 0, 0, 0, 0], [0, 0, 0, 0, 1]])


def test_draws_differ_by_epoch_and_repeat_with_the_seed(photos):
    root, manifest = photos
    section = SECTION["pre_transforms"]
    mixed = ImageDataset(manifest, root, num_classes=E, task="multilabel", view_spec=SPEC, seed=3,
                         pre_transforms=SubjectPreTransforms(section["probabilities"], contain_overlap=0.5,
                                                             max_masked_area=0.4, mask_probability=0.5))
    heads = [int(mixed[(epoch, 0)]["head"]) for epoch in range(12)]
    assert len(set(heads)) > 1, heads
    assert heads == [int(mixed[(epoch, 0)]["head"]) for epoch in range(12)]
    sampler = EpochSampler(range(3))
    sampler.set_epoch(5)
    assert list(sampler) == [(5, 0), (5, 1), (5, 2)] and len(sampler) == 3


def test_the_person_item_gives_the_box_in_the_image_views_pixels(photos):
    root, manifest = photos
    data = PersonDataset(manifest, root, num_classes=E, task="multilabel", views=("image",),
                         view_specs={"image": SPEC}, box_view="image")
    # a.png is 40 x 20: x * 64 / 40 = 1.6 x, y * 64 / 20 = 3.2 y
    np.testing.assert_allclose(data[2]["person_box"].numpy(), [38.4, 32.0, 51.2, 57.6], rtol=1e-6)
    np.testing.assert_allclose(data[1]["person_box"].numpy(), [16.0, 16.0, 48.0, 60.0], rtol=1e-6)
    plain = PersonDataset(manifest, root, num_classes=E, task="multilabel", views=("image",),
                          view_specs={"image": SPEC})
    assert "person_box" not in plain[0]
    with pytest.raises(UserError, match="box_view"):
        PersonDataset(manifest, root, num_classes=E, task="multilabel", views=("body",),
                      view_specs={"body": SPEC}, box_view="image")


# --------------------------------------------------------------------------- through the loop


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Tiny generated EMOTIC data (synth + ingest), BENet trained one EpochLoop epoch, exported as a package."""
    import tiny_pipeline

    from core.data import ingest
    from core.params import params_from_dict
    from core.synth import generate
    from core.training.inputs import worker_config
    from core.training.loop import EpochLoop
    from core.workspace import Workspace

    root = tmp_path_factory.mktemp("benet_tiny")
    params_dict = tiny_pipeline.tiny_params_dict(root)
    params_dict["model"]["name"] = "benet"
    params = params_from_dict(params_dict).for_model("benet")
    generate(root / "raw", images=10, seed=params.synth.seed)
    ingest.run(params.data, params.seed, out_dir=root / "data")
    paths = Workspace.at(root, data_root=root / "raw")
    loop = EpochLoop(worker_config(params, paths))
    before = [p.detach().clone() for p in loop.model.parameters()]
    loop.prepare()
    record = loop.run_epoch(0)
    model_dir = root / "model"
    model_dir.mkdir()
    state = loop.state_dict(0)
    torch.save({"state_dict": state["model"], "spec": state["spec"], "classes": [f"c{i}" for i in range(26)],
                "task": "multilabel", "params": state["params"]}, model_dir / "model.pt")
    return {"root": root, "paths": paths, "loop": loop, "record": record, "before": before, "params": params,
            "model_dir": model_dir}


def test_one_epoch_trains_benet_on_images_and_validates_per_person(trained):
    loop, record = trained["loop"], trained["record"]
    from core.data.manifest import read_manifest

    train = read_manifest("train", trained["paths"].manifest_dir)
    assert type(loop.train_loader.dataset).__name__ == "ImageDataset"
    assert len(loop.train_loader.dataset) == train["image_path"].nunique() < len(train)
    assert isinstance(loop.train_loader.sampler, EpochSampler)
    assert len(loop.val_set) == len(read_manifest("val", trained["paths"].manifest_dir))  # per person
    assert np.isfinite(record["train_loss"]) and record["train_loss"] > 0
    assert 0.0 <= record["val_map"] <= 1.0 and record["val_map"] == record["val_metric"]
    changed = [not torch.equal(a, b) for a, b in zip(trained["before"], loop.model.parameters())]
    assert sum(changed) > len(changed) // 2  # the backbone and every head trained
    val_item = loop.val_set[0]
    assert set(model_inputs(loop.model, {k: v[None] for k, v in val_item.items()})) == {"image", "person_box"}


def test_benet_has_no_frozen_backbone_path(trained):
    import dataclasses

    from core.training.body_cache import frozen_path

    params = trained["params"]
    frozen = dataclasses.replace(params, train=dataclasses.replace(params.train, frozen_backbone=True))
    with pytest.raises(UserError, match="'benet' has no frozen-backbone path"):
        frozen_path(frozen)


def with_sizes(package, size: float):
    """The package's BENet with every predicted size `size` map pixels (one epoch leaves them near 0)."""
    for head in (package.model.detection.predict_quarter["size"], package.model.detection.predict_half["size"]):
        last = [m for m in head.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        last.weight.data.zero_()
        last.bias.data.fill_(size)
    return package


def test_bottom_up_people_are_inside_the_frame_with_their_emotions(trained):
    from core.bottom_up import bottom_up_people
    from core.inference import bottom_up_people as reexported
    from core.inference import load_model_package
    from models.benet_losses import map_stride, read_emotions

    rgb = np.asarray(Image.open(next((trained["root"] / "raw").rglob("*.jpg"))).convert("RGB"))
    height, width = rgb.shape[:2]
    as_trained = bottom_up_people(load_model_package(trained["model_dir"]), rgb)[0]
    assert len(as_trained) <= 5 and ((as_trained[:, 2:] - as_trained[:, :2]) > 0).all()  # no box without area
    package = with_sizes(load_model_package(trained["model_dir"]), 3.0)
    boxes, scores, emotions = bottom_up_people(package, rgb)
    np.testing.assert_array_equal(reexported(package, rgb)[0], boxes)
    assert boxes.shape == (5, 4) and scores.shape == (5,) and emotions.shape == (5, 26)  # top_k 5, threshold 0
    assert (boxes[:, [0, 2]] >= 0).all() and (boxes[:, [0, 2]] <= width).all()
    assert (boxes[:, [1, 3]] >= 0).all() and (boxes[:, [1, 3]] <= height).all()
    assert ((scores >= 0) & (scores <= 1)).all() and (np.diff(scores) <= 0).all()
    probabilities = 1 / (1 + np.exp(-emotions))  # raw logits as predict_loader gives: sigmoid for probabilities
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
    # the emotions are the maps' values at each detection's centre cell, the mean of the 1/4 and 1/2 maps
    from core.data.dataset import view_tensor

    model = package.model
    image = view_tensor("image", rgb, model.view_specs["image"], body_box=(0, 0, width, height), face_box=None)
    with torch.no_grad():
        output = model({"image": image[None]})
        ((found, _),) = model.detect(output)
        expected = sum(read_emotions(maps[0], found, map_stride(output.image_size, maps.shape[-2:]))
                       for maps in output.emotions) / 2
    np.testing.assert_allclose(emotions, expected.numpy(), rtol=1e-5, atol=1e-5)


def test_predict_without_boxes_uses_benets_people_and_with_a_box_the_evaluation_path(trained):
    from core.data.manifest import read_manifest
    from core.evaluation import evaluate
    from core.inference import load_model_package
    from pipelines import predict

    package = with_sizes(load_model_package(trained["model_dir"]), 3.0)
    loaded = predict.LoadedModel(package=package, source=str(trained["model_dir"]), objects_meta=None)
    predictor = predict.Predictor(loaded, trained["root"])
    row = read_manifest("test", trained["paths"].manifest_dir).iloc[0]
    photo = trained["paths"].data_root / row["image_path"]
    found = predictor.predict(photo)
    assert found.people_source == "benet" and len(found.people) == 5
    assert all(p.box_source == "benet" and 0 <= p.detection_score <= 1 and p.scores.shape == (26,)
               for p in found.people)
    given = predictor.predict(photo, [row["person_box"]])
    assert given.people_source == "given" and given.people[0].box_source == "given"
    reference = evaluate.score_split(package, trained["paths"], "test", batch_size=2).scores
    np.testing.assert_allclose(given.people[0].scores, reference[0], rtol=1e-5, atol=1e-6)


def test_the_mlflow_pyfunc_model_scores_its_input_example_with_benet(trained):
    from core.inference import load_model_package
    from core.tracking import pyfunc_input_example
    from pipelines import predict
    from pipelines.mlflow_model import EmotionModel

    model = EmotionModel()
    model.loaded = predict.LoadedModel(package=load_model_package(trained["model_dir"]), source="test",
                                       objects_meta=None)
    scores = model.predict(None, pyfunc_input_example())
    assert scores.shape == (1, 26) and np.isfinite(scores.to_numpy()).all()


def test_benet_is_registered_with_its_params_section():
    from support import repo_params

    from models import available_models

    params = repo_params()
    assert "benet" in available_models() and "benet" in params.compare.models
    benet = params.for_model("benet")
    assert benet.train.optimizer == "adam" and benet.train.lr == 0.001
    assert benet.model.benet.backbone.name == "resnet18" and not benet.model.benet.backbone.pretrained
    paper = copy.deepcopy(SECTION)["pre_transforms"]["probabilities"]  # 0.25 each (section 3.3)
    assert dict(benet.model.benet.pre_transforms.probabilities) == paper
