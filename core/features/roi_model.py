"""The RoI feature model: ResNet-50 C4 map, RoIAlign, res5 head (the bottom-up-attention C4 recipe).

The image is resized so its shorter side is `objects.image_size` and ImageNet-normalised
(`prepare_image`); conv1..layer3 give the C4 map (stride 16); each box is RoIAligned to 14x14 on
it; layer4 (res5) brings that to 7x7 and an average pool gives the 2048-d vector. With detector
boxes the Faster R-CNN's own ResNet-50 body is the feature extractor, so one set of weights
serves both.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from core.features.weights import WeightsChoice, load_checked
from core.params import ObjectsConfig

FEATURE_DIM = 2048
C4_STRIDE = 16
ROI_OUTPUT = 14            # res5 halves it to 7x7, as in the bottom-up-attention C4 head
ROI_SAMPLING_RATIO = 2
# Part of every shard fingerprint: bump it when the numbers core/features computes change, so that
# shards written by older code are recomputed instead of mixed in.
FEATURE_VERSION = 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def coco_categories() -> list[str]:
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    return list(FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"])


class RoIFeatureModel(nn.Module):
    """ResNet-50 C4 map + res5 RoI head, optionally with the Faster R-CNN that owns the body."""

    def __init__(self, resnet_body: nn.Module, detector: nn.Module | None = None):
        super().__init__()
        self.stem = nn.Sequential(resnet_body.conv1, resnet_body.bn1, resnet_body.relu, resnet_body.maxpool)
        self.layer1, self.layer2, self.layer3 = resnet_body.layer1, resnet_body.layer2, resnet_body.layer3
        self.layer4 = resnet_body.layer4
        self.detector = detector

    def c4_map(self, image: torch.Tensor) -> torch.Tensor:
        return self.layer3(self.layer2(self.layer1(self.stem(image))))

    def detect(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(C4 map, boxes in `image` pixels, scores, class ids) from one normalised image [1,3,H,W].

        Runs the GeneralizedRCNN pieces by hand instead of `detector(images)`: its transform would
        resize and normalise again, and the C4 map it computes would be lost.
        """
        from torchvision.models.detection.image_list import ImageList

        assert self.detector is not None
        pyramid_inputs = self.detector.backbone.body(image)
        c4 = pyramid_inputs["2"]   # layer3 output (IntermediateLayerGetter names layers 1..4 as '0'..'3')
        pyramid = self.detector.backbone.fpn(pyramid_inputs)
        images = ImageList(image, [tuple(image.shape[-2:])])
        proposals, _ = self.detector.rpn(images, pyramid)
        detections, _ = self.detector.roi_heads(pyramid, proposals, images.image_sizes)
        return c4, detections[0]["boxes"], detections[0]["scores"], detections[0]["labels"]

    def roi_features(self, c4: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """[K,2048] for boxes [K,4] given in the pixels of the image the C4 map was computed on."""
        from torchvision.ops import roi_align

        if boxes.shape[0] == 0:
            return c4.new_zeros((0, FEATURE_DIM))
        rois = roi_align(c4, [boxes.to(c4.dtype)], output_size=ROI_OUTPUT, spatial_scale=1.0 / C4_STRIDE,
                         sampling_ratio=ROI_SAMPLING_RATIO, aligned=True)
        return self.layer4(rois).mean(dim=(2, 3))


def detections_per_image(cfg: ObjectsConfig) -> int:
    # Room for the top_n context objects plus the people that get excluded as targets.
    return max(100, 2 * cfg.top_n)


def build_model(cfg: ObjectsConfig, choice: WeightsChoice, state_dict: dict[str, torch.Tensor] | None,
                seed: int) -> RoIFeatureModel:
    """The extractor in eval mode. Random init (state_dict None) is seeded: every actor gets the same."""
    from torchvision.models import resnet50
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed if choice.seed is None else choice.seed)
        if cfg.boxes == "detector":
            detector = fasterrcnn_resnet50_fpn(
                weights=None, weights_backbone=None, num_classes=len(coco_categories()),
                box_score_thresh=cfg.score_threshold, box_detections_per_img=detections_per_image(cfg))
            if state_dict is not None:
                load_checked(detector, state_dict, "fasterrcnn_resnet50_fpn")
            model = RoIFeatureModel(detector.backbone.body, detector)
        else:
            resnet = resnet50(weights=None)
            if state_dict is not None:
                prefix = "backbone.body."
                from_detector = any(k.startswith(prefix) for k in state_dict)
                if from_detector:  # a Faster R-CNN file: its ResNet-50 body is the extractor
                    state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
                load_checked(resnet, state_dict, "resnet50 (or fasterrcnn_resnet50_fpn)",
                             ignorable_missing=("fc.",) if from_detector else ())
            model = RoIFeatureModel(resnet)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.eval()


def prepare_image(rgb: np.ndarray, image_size: int, device: torch.device | str = "cpu", channels_last: bool = False
                  ) -> tuple[torch.Tensor, tuple[float, float]]:
    """Normalised [1,3,h,w] tensor whose shorter side is `image_size`, and the (x, y) scale factors.

    `channels_last`: the tensor in NHWC layout, for a model converted to it (`build_model`).
    """
    height, width = rgb.shape[:2]
    short = min(height, width)
    new_h = max(1, round(height * image_size / short))
    new_w = max(1, round(width * image_size / short))
    image = torch.from_numpy(np.ascontiguousarray(rgb)).to(device).permute(2, 0, 1)[None].float().div_(255.0)
    if (new_h, new_w) != (height, width):
        image = nn.functional.interpolate(image, size=(new_h, new_w), mode="bilinear", align_corners=False,
                                          antialias=True)
    mean = torch.tensor(IMAGENET_MEAN, device=image.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=image.device).view(1, 3, 1, 1)
    # An image that needs no resize is still the decoder's HWC in NCHW's shape: the layout is set
    # either way, so the convolutions run in the one the model was built for.
    layout = torch.channels_last if channels_last else torch.contiguous_format
    return ((image - mean) / std).contiguous(memory_format=layout), (new_w / width, new_h / height)


def describe_extractor(cfg: ObjectsConfig) -> dict[str, Any]:
    """The meta.json `extractor` record: how the features were computed, for readers and audits."""
    return {
        "backbone": "resnet50", "c4": "conv1..layer3 (stride 16)", "res5": "layer4", "pool": "mean over 7x7",
        "roi_align": {"output_size": ROI_OUTPUT, "spatial_scale": 1.0 / C4_STRIDE,
                      "sampling_ratio": ROI_SAMPLING_RATIO, "aligned": True},
        "image_size": cfg.image_size, "resize": "shorter side, bilinear antialiased",
        "normalize": {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}, "version": FEATURE_VERSION,
    }
