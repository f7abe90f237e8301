"""BENet, the Bottom-up Emotions Network of "A lightweight bottom-up framework for context-aware
emotion recognition" (Cladière et al., sections 2-3): one backbone over the whole image, four heads.

    image [B,3,H,W] --PyramidBackbone--> P2 [B,C,H/4,W/4], P3 (1/8), P4 (1/16), P5 (1/32)     C = pyramid_channels
    bottom-up head  (P2): emotion logits [B,E,H/4,W/4] and, after a deconvolution, [B,E,H/2,W/2]
    detection head  (P2): centre logits [B,1,.,.] and sizes (w, h in map pixels) [B,2,.,.] at 1/4 and 1/2
    person-centric head (P2..P5 of the image cropped to one subject): logits [B,E]
    background head     (P2..P5 of the image with every subject masked): logits [B,E]

All four heads read the one shared backbone (section 2.2: "a unique backbone, which means that the
heads share common features"). In training each image is pre-transformed for one head (section 3.3,
core/data/subject_transforms.py) and "dispatched at the end of the backbone" to that head only:
`inputs["head"]` [B] (ids of models.benet_config.HEADS) routes the rows, and a head runs on its rows
only. Without `head` (inference) every head runs on every image.

forward(inputs) returns a `BENetOutput` (fields as ModelOutput's first, then the maps):
    logits      [B,E] the emotion logits read at inputs["person_box"] [B,4] (input pixels; mean of the
                two resolutions), when given and not routed; else None
    attention, continuous, auxiliary: None
    centre      (quarter [Bd,1,h4,w4], half [Bd,1,h2,w2]) logits; sigmoid = the centre heatmap
    size        (quarter [Bd,2,h4,w4], half [Bd,2,h2,w2]) (width, height) in that map's pixels
    emotions    (quarter [Bb,E,h4,w4], half [Bb,E,h2,w2]) logits
    person      [Bp,E] logits;  background [Bg,E] logits
    rows        {head: long [B_head]} the batch rows each head ran on (their order is the maps')
    image_size  (H, W) of the input, for the strides (h4 = ceil(H / 4), h2 = 2 h4)
A head with no rows gives None. `detect(output)` decodes people, `emotions_at(output, boxes)`
reads their emotions (module functions `decode_detections` and `read_emotions` do the work).

What the paper fixes, and what is ours:
- Backbone. Paper: HRNet-W32 (streams at 1/4..1/32 of widths 32..256) with channel and spatial
  attention modules. Ours: HRNet is not in torchvision, and the project's backbones are torchvision
  ResNets with offline-loadable ImageNet weights (models/backbones.py), so a ResNet (resnet18 on
  CPU, resnet50 closer in capacity) is tapped at layer1..layer4 (1/4..1/32) and fused top-down as
  an FPN (1x1 laterals, nearest upsampling, sum, 3x3 conv-BN-ReLU): P2 keeps stride 4 with the
  deeper layers' semantics added, which is what HRNet's repeatedly fused 1/4 stream provides.
  `attention: true` puts a CBAM-like module (channel MLP on avg+max pooling, ratio 2; 7x7 spatial
  conv on channel mean+max) on each pyramid level (the paper's modules sit inside HRNet's blocks).
- Bottom-up and detection heads. Paper: "very similar to [HigherHRNet]", a deconvolution from 1/4 to
  1/2 on the highest-resolution features, predictions at both. Ours, after HigherHRNet: `dense.blocks`
  residual blocks, a predictor per output at 1/4 (CenterNet's conv3x3-ReLU-conv1x1), then
  ConvTranspose2d(stride 2) of [features ; the 1/4 predictions] to `dense.deconv_channels`, BN,
  ReLU, blocks, and predictors at 1/2. Detection: one such head with two predictors (centre 1
  channel, its last bias log(prior / (1 - prior)) so that every cell starts at `centre_prior`,
  CenterNet's -2.19 at 0.1; size 2 channels, raw values); bottom-up: one with E channels. No centre
  offset head (the paper names none): a centre decodes to the middle of its cell.
- Person-centric and background heads. Paper: HRNet's classification head [16] with the bottleneck
  expansion reduced by 4, "same design" for both, separate weights. Ours: on P2..P5, a bottleneck
  (expansion 1) per level to `classifier.channels`, strided 3x3 conv-BN-ReLU from each level into
  the next, a 1x1 conv-BN-ReLU to `classifier.final_channels`, global average pooling, then Linear
  (or Linear-ReLU-Linear with `classifier.hidden`) to E. Their inputs are whole images to the
  backbone (the crop resized to the input size; the masked image), as the paper's Fig. 1 shows.
- Losses (models/benet_losses.py): the paper's eqs. 1-7 with its values in params; ours: the
  normalisations across a batch (each image's term as the paper writes it, then the mean over the
  images routed to that head) and the Gaussian's radius rule.
- Inference (ours, the paper: "similar to [CenterNet]"): centre scores σ(logits), peaks kept where
  a `nms_kernel` max-pool leaves them unchanged, the `top_k` best above `threshold`; a peak in cell
  (i, j) is the centre ((j + 0.5) sx, (i + 0.5) sy), its box that centre +- (w sx, h sy) / 2 with
  the sizes read there (negative sizes clamp to 0). `decode.resolution`: the 1/4 maps, the 1/2
  maps, or both (HigherHRNet's aggregation: the 1/4 scores and sizes upsampled bilinearly to 1/2,
  sizes doubled to 1/2 pixels, averaged with the 1/2 ones). A person's emotions are the mean of the
  logits read at their centre cell in the 1/4 and 1/2 maps (the paper does not say how it combines
  the two resolutions at test time).
- Task: multilabel (EMOTIC); multiclass targets train as one-hot rows through the same focal loss.
- Initialisation: PyTorch's defaults; the backbone as `BackboneConfig` says.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from models.backbones import build_backbone
from models.benet_config import HEADS, SECTION, VIEWS, BENetConfig, BENetDecodeConfig
from models.benet_heads import ClassifierHead, DenseHead, PyramidBackbone
from models.benet_losses import BENetLoss, map_stride, read_emotions
from models.config import ConfigError, view_specs
from models.registry import register_model

__all__ = ["BENet", "BENetLoss", "BENetOutput", "build_benet", "build_benet_criterion", "decode_detections",
           "head_ids", "read_emotions"]

TASKS = ("multilabel", "multiclass")
Maps = tuple[torch.Tensor, torch.Tensor]


class BENetOutput(NamedTuple):
    logits: torch.Tensor | None
    attention: torch.Tensor | None
    continuous: torch.Tensor | None
    auxiliary: dict[str, torch.Tensor] | None
    centre: Maps | None
    size: Maps | None
    emotions: Maps | None
    person: torch.Tensor | None
    background: torch.Tensor | None
    rows: dict[str, torch.Tensor]
    image_size: tuple[int, int]


def head_ids(names: Sequence[str]) -> torch.Tensor:
    """The `head` tensor [B] for the loader's head names (the transforms' `head`)."""
    unknown = sorted(set(names) - set(HEADS))
    if unknown:
        raise ValueError(f"unknown BENet head(s) {unknown}; heads: {list(HEADS)}")
    return torch.tensor([HEADS.index(name) for name in names], dtype=torch.long)


def decode_detections(scores: torch.Tensor, sizes: torch.Tensor, stride: tuple[float, float], *, top_k: int,
                      threshold: float, nms_kernel: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Centre scores [B,1,h,w] in [0, 1] and sizes [B,2,h,w] (map pixels) -> per image (boxes [K,4]
    in input pixels, scores [K]), best first: peaks of a `nms_kernel` max-pool, the `top_k` best,
    those with score >= threshold."""
    if scores.dim() != 4 or scores.shape[1] != 1 or sizes.shape != (scores.shape[0], 2, *scores.shape[2:]):
        raise ValueError(f"decode: expected scores [B,1,h,w] and sizes [B,2,h,w], got {tuple(scores.shape)} "
                         f"and {tuple(sizes.shape)}")
    pooled = F.max_pool2d(scores, nms_kernel, stride=1, padding=nms_kernel // 2)
    peaks = torch.where(pooled == scores, scores, torch.zeros_like(scores)).flatten(1)
    width = scores.shape[-1]
    best, where = peaks.topk(min(top_k, peaks.shape[1]), dim=1)
    found = []
    for image in range(scores.shape[0]):
        keep = best[image] >= threshold
        cells, kept = where[image][keep], best[image][keep]
        rows, cols = cells // width, cells % width
        size = sizes[image][:, rows, cols].clamp_min(0)  # [2,K]
        cx, cy = (cols.to(scores) + 0.5) * stride[1], (rows.to(scores) + 0.5) * stride[0]
        half_w, half_h = size[0] * stride[1] / 2, size[1] * stride[0] / 2
        found.append((torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=1), kept))
    return found


class BENet(nn.Module):
    embedding_dim = None  # holds no label embeddings
    predicts_vad = False
    # What the pipeline reads off the family (core/data/image_dataset.py, core/bottom_up.py), so that no
    # code outside models/ names it: it trains on whole images with all their people, each drawn for one
    # head (not on one person per item); a person-level item gives it `person_box` in the pixels of its
    # `image` view (validation, evaluation, `ctxemo predict --box`); and it finds people itself.
    trains_on = "images"
    box_view = "image"
    finds_people = True

    def __init__(self, cfg: BENetConfig, *, num_classes: int, task: str, load_pretrained: bool = True) -> None:
        super().__init__()
        if task not in TASKS:
            raise ConfigError(f"task must be 'multilabel' or 'multiclass', got {task!r}")
        self.config, self.num_classes, self.task = cfg, int(num_classes), task
        self.views = VIEWS
        self.view_specs = view_specs(cfg.views, VIEWS, section=SECTION)
        trunk = build_backbone(cfg.backbone, load_weights=load_pretrained, section=f"{SECTION}.backbone")
        self.backbone = PyramidBackbone(trunk, cfg.pyramid_channels, cfg.attention)
        channels, dense = cfg.pyramid_channels, cfg.dense
        shape = {"blocks": dense.blocks, "deconv_channels": dense.deconv_channels, "deconv_kernel": dense.deconv_kernel}
        prior = math.log(cfg.centre_prior / (1 - cfg.centre_prior))
        self.bottom_up = DenseHead(channels, {"emotions": self.num_classes}, **shape)
        self.detection = DenseHead(channels, {"centre": 1, "size": 2}, biases={"centre": prior}, **shape)
        head = cfg.classifier
        self.person = ClassifierHead(channels, tuple(head.channels), head.final_channels, head.hidden,
                                     self.num_classes)
        self.background = ClassifierHead(channels, tuple(head.channels), head.final_channels, head.hidden,
                                         self.num_classes)

    def backbone_parameters(self) -> list[nn.Parameter]:
        """The ResNet trunk's parameters (for the trainer's `train.backbone_lr`)."""
        return self.backbone.trunk_parameters()

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> BENetOutput:
        images, head, person_box = _check_inputs(inputs)
        dtype = next(self.parameters()).dtype
        levels = self.backbone(images.to(dtype))
        rows = _routes(head, images.shape[0], images.device)
        run = {name: index for name, index in rows.items() if index.numel() > 0}
        centre = size = emotions = person = background = None
        if "detection" in run:
            quarter, half = self.detection(levels[0][run["detection"]])
            centre, size = (quarter["centre"], half["centre"]), (quarter["size"], half["size"])
        if "bottom_up" in run:
            quarter, half = self.bottom_up(levels[0][run["bottom_up"]])
            emotions = (quarter["emotions"], half["emotions"])
        if "person" in run:
            person = self.person([level[run["person"]] for level in levels])
        if "background" in run:
            background = self.background([level[run["background"]] for level in levels])
        image_size = (int(images.shape[-2]), int(images.shape[-1]))
        logits = None
        if person_box is not None and head is None:
            logits = torch.stack([_read_both(emotions, index, person_box[index:index + 1], image_size)[0]
                                  for index in range(images.shape[0])])
        return BENetOutput(logits, None, None, None, centre, size, emotions, person, background,
                           {name: index.cpu() for name, index in rows.items()}, image_size)

    def detect(self, output: BENetOutput, decode: BENetDecodeConfig | None = None
               ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per image of `output.rows['detection']`: (boxes [K,4] in input pixels, centre scores [K])."""
        decode = decode or self.config.decode
        if output.centre is None:
            raise ValueError("benet detect: the detection head did not run on any image")
        scores, sizes = _decoding_maps(output, decode.resolution)
        stride = map_stride(output.image_size, scores.shape[-2:])
        return decode_detections(scores, sizes, stride, top_k=decode.top_k, threshold=decode.threshold,
                                 nms_kernel=decode.nms_kernel)

    def emotions_at(self, output: BENetOutput, boxes: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Per image of `output.rows['bottom_up']`, the emotion logits [P,E] at the centres of its boxes
        [P,4] (annotated or detected), the mean of the 1/4 and 1/2 maps' values."""
        if output.emotions is None or len(boxes) != output.emotions[0].shape[0]:
            raise ValueError("benet emotions_at: one box tensor per image the bottom-up head ran on is needed")
        return [_read_both(output.emotions, index, box, output.image_size) for index, box in enumerate(boxes)]


def _read_both(emotions: Maps | None, index: int, boxes: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    if emotions is None:
        raise ValueError("benet: the bottom-up head did not run")
    reads = [read_emotions(maps[index], boxes, map_stride(image_size, maps.shape[-2:])) for maps in emotions]
    return (reads[0] + reads[1]) / 2


def _decoding_maps(output: BENetOutput, resolution: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(centre scores [B,1,h,w], sizes [B,2,h,w] in that map's pixels) to decode from."""
    quarter, half = torch.sigmoid(output.centre[0]), torch.sigmoid(output.centre[1])
    if resolution == "quarter":
        return quarter, output.size[0]
    if resolution == "half":
        return half, output.size[1]
    target = half.shape[-2:]
    scores = (half + F.interpolate(quarter, size=target, mode="bilinear", align_corners=False)) / 2
    upsampled = F.interpolate(output.size[0], size=target, mode="bilinear", align_corners=False)
    ratio = torch.tensor([target[1] / quarter.shape[-1], target[0] / quarter.shape[-2]]).to(upsampled)
    return scores, (output.size[1] + upsampled * ratio[None, :, None, None]) / 2


def _routes(head: torch.Tensor | None, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
    if head is None:
        everyone = torch.arange(batch, device=device)
        return {name: everyone for name in HEADS}
    head = head.to(device)
    return {name: torch.nonzero(head == index).flatten() for index, name in enumerate(HEADS)}


def _shape(value: object) -> object:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


def _check_inputs(inputs: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    if not isinstance(inputs, Mapping) or "image" not in inputs:
        raise ValueError(f"benet reads a mapping with 'image' [B,3,H,W] (and optionally 'head' [B], "
                         f"'person_box' [B,4]), got {sorted(inputs) if isinstance(inputs, Mapping) else inputs!r}")
    images, head, person_box = inputs["image"], inputs.get("head"), inputs.get("person_box")
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"benet: input 'image' must be [B,3,H,W], got {_shape(images)}")
    batch = images.shape[0]
    if head is not None:
        if not isinstance(head, torch.Tensor) or tuple(head.shape) != (batch,) or head.is_floating_point():
            raise ValueError(f"benet: input 'head' must be integer head ids [{batch}], got {_shape(head)}")
        if bool(((head < 0) | (head >= len(HEADS))).any()):
            raise ValueError(f"benet: 'head' ids must lie in [0, {len(HEADS)}) ({list(HEADS)}), got {head.tolist()}")
    if person_box is not None and (not isinstance(person_box, torch.Tensor) or tuple(person_box.shape) != (batch, 4)):
        raise ValueError(f"benet: input 'person_box' must be [{batch},4] in input pixels, got {_shape(person_box)}")
    return images, head, person_box


def build_benet_criterion(cfg: BENetConfig, *, task: str, loss_name: str | None = None,
                          label_freq: np.ndarray | None = None, seed: int = 0) -> BENetLoss:
    """The family's training loss, set in `model.benet.loss`; `loss_name`, `label_freq` and `seed` are
    ignored (no class weights, no randomness)."""
    del task, loss_name, label_freq, seed
    return BENetLoss(cfg.loss)


@register_model("benet", config=BENetConfig, criterion=build_benet_criterion)
def build_benet(cfg: BENetConfig, *, num_classes: int, task: str, cooccurrence: np.ndarray | torch.Tensor | None = None,
                label_embeddings: np.ndarray | torch.Tensor | None = None, load_pretrained: bool = True) -> BENet:
    """The registry's builder signature (models/registry.py); no label graph: the two are ignored."""
    del cooccurrence, label_embeddings
    return BENet(cfg, num_classes=num_classes, task=task, load_pretrained=load_pretrained)
