"""`model.benet`: the typed, frozen config of BENet (models/benet.py). Torch-free.

`models.config.from_dict(BENetConfig, section, "model.benet")` builds it from the params section;
nothing here has a default (params.yaml is the one home of every value). from_dict checks each
value against its type and the rule beside its field; what ties values together is checked on
construction. Either way a `ConfigError` names the dotted key. What each choice means, and which
of them the paper makes, is in models/benet.py's docstring.

The paper's values, for the params section: loss centre_alpha 2, centre_beta 4, centre_weight 1,
size_weight 0.1, emotion_gamma 2, every emotion head's weight 1 (eqs. 1-7); pre_transforms
probabilities 0.25 each and max_masked_area 0.4 (section 3.3); Adam, lr 1e-3, 250 epochs
(section 4.1, `train`). Every other size below is ours and says so.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from models.config import (
    BackboneConfig,
    ConfigError,
    ViewConfig,
    at_least,
    check_views,
    one_of,
    within,
)

SECTION = "model.benet"
VIEWS = ("image",)  # the whole image; the loader pre-transforms it (core/data/subject_transforms.py)
# the FPN taps layer1..layer4 of a torchvision ResNet (models/benet_heads.py); no other trunk has them
RESNETS = ("resnet18", "resnet50")
# the heads an image can be routed to, in the order of their ids (batch["head"] holds the id)
HEADS = ("detection", "bottom_up", "person", "background")
# the pre-transformations of section 3.3 and the head each one trains
PRE_TRANSFORMS = {"raw": "detection", "random_mask_subjects": "bottom_up", "extract_subject": "person",
                  "mask_all_subjects": "background"}
RESOLUTIONS = ("quarter", "half", "both")  # the map(s) `decode` reads people and emotions from
DECONV_KERNELS = (2, 3, 4)  # ConvTranspose2d kernels that exactly double a map (HigherHRNet: 4)
PYRAMID_LEVELS = 4  # 1/4, 1/8, 1/16, 1/32: HRNet's four streams, here the FPN levels


@dataclass(frozen=True)
class BENetDenseConfig:
    """`model.benet.dense`: the bottom-up and detection heads (HigherHRNet's final layers + deconvolution)."""

    # residual 3x3 blocks before each prediction, at 1/4 and after the deconvolution (HigherHRNet: 4)
    blocks: int = at_least(0)
    deconv_channels: int = at_least(1)  # width of the 1/2-resolution features (HigherHRNet: 32)
    deconv_kernel: int = one_of(*DECONV_KERNELS)  # the transposed convolution's kernel (HigherHRNet: 4)


@dataclass(frozen=True)
class BENetClassifierConfig:
    """`model.benet.classifier`: the person-centric and background heads (HRNet's classification head)."""

    # the bottleneck widths at 1/4..1/32 (HRNet: 32, 64, 128, 256 with expansion 4; the paper cuts the
    # expansion by 4, so these are the blocks' output widths)
    channels: tuple[int, ...] = at_least(1)
    final_channels: int = at_least(1)  # the 1x1 conv before pooling (HRNet 2048; / 4 = 512)
    hidden: int | None = at_least(1)  # null: Linear(final -> E); an int: Linear-ReLU-Linear with this width

    def __post_init__(self) -> None:
        if len(self.channels) != PYRAMID_LEVELS:
            raise ConfigError(f"{SECTION}.classifier.channels must be {PYRAMID_LEVELS} ints >= 1 (one per "
                              f"resolution 1/4..1/32, HRNet [32, 64, 128, 256]), got {list(self.channels)!r}")


@dataclass(frozen=True)
class BENetLossConfig:
    """`model.benet.loss`: L_TOT = L_DET + L_CAT (eqs. 1-7); models/benet_losses.py computes it."""

    centre_alpha: float = at_least(0)  # α of the centre heatmap's focal loss, eq. 1 (paper 2)
    centre_beta: float = at_least(0)  # β, the penalty reduction around a centre, eq. 1 (paper 4)
    centre_weight: float = at_least(0)  # λ_center, eq. 3 (paper 1)
    size_weight: float = at_least(0)  # λ_size on the L1 width/height term, eq. 3 (paper 0.1)
    emotion_gamma: float = at_least(0)  # the exponent α of the multi-label focal loss, eq. 5 (paper 2)
    bottom_up_weight: float = at_least(0)  # the weights of eq. 6's terms (paper 1, 1, 1): ours to switch
    person_weight: float = at_least(0)  # a head off (0) for the paper's Table 1 ablations
    background_weight: float = at_least(0)
    # the Gaussian of a centre: a box of the same size shifted diagonally by the radius keeps at least
    # this IoU with the true box (CenterNet/CornerNet's rule; 0.7 there; the paper: unsaid)
    min_overlap: float = within(0, 1, low_open=True, high_open=True)


@dataclass(frozen=True)
class BENetDecodeConfig:
    """`model.benet.decode`: heatmap peaks -> boxes at inference (the paper: CenterNet's decoding)."""

    # quarter | half | both (the mean of the two heatmaps at 1/2, HigherHRNet's aggregation)
    resolution: str = one_of(*RESOLUTIONS)
    top_k: int = at_least(1)  # at most this many people per image (CenterNet 100)
    threshold: float = within(0, 1)  # peaks with a lower centre score are dropped
    nms_kernel: int = at_least(1)  # the max-pool window of the peak NMS (CenterNet 3); odd


@dataclass(frozen=True)
class BENetPreTransformConfig:
    """`model.benet.pre_transforms`: section 3.3's per-image draw (core/data/subject_transforms.py)."""

    # extract_subject, mask_all_subjects, random_mask_subjects, raw -> probability (paper 0.25 each)
    probabilities: dict[str, float]
    # ExtractSubject is not drawn when another person is inside the chosen subject's box: their box
    # centre lies in it, or at least this fraction of their box's area does (the paper: unsaid)
    contain_overlap: float = within(0, 1, low_open=True)
    # MaskAllSubjects only when the subjects' box areas sum to at most this fraction of the image (paper 0.4)
    max_masked_area: float = within(0, 1)
    # RandomMaskSubjects: each subject but one is masked with this probability (the paper: unsaid)
    mask_probability: float = within(0, 1)

    def __post_init__(self) -> None:
        key = f"{SECTION}.pre_transforms.probabilities"
        if not isinstance(self.probabilities, dict) or set(self.probabilities) != set(PRE_TRANSFORMS):
            got = sorted(self.probabilities) if isinstance(self.probabilities, dict) else self.probabilities
            # a missing one is named as from_dict names every missing params key
            named = set(got) if isinstance(got, list) else set()
            missing = [f"{key}.{name}" for name in sorted(set(PRE_TRANSFORMS) - named)]
            raise ConfigError(f"{'missing key(s) ' + str(missing) + ': ' if missing else ''}{key} must name exactly "
                              f"{sorted(PRE_TRANSFORMS)}, got {got!r}")
        bad = {name: p for name, p in self.probabilities.items()
               if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1}
        if bad:
            raise ConfigError(f"{key}: each must be a number in [0, 1], got {bad}")
        total = sum(float(p) for p in self.probabilities.values())
        if abs(total - 1.0) > 1e-6:
            raise ConfigError(f"{key} must sum to 1 (paper 0.25 each), got {total:g}")


@dataclass(frozen=True)
class BENetConfig:
    """`model.benet`: each value is checked on load (from_dict), its views and the rules that tie values
    together on construction; a bad one is a ConfigError naming its key."""

    views: dict[str, ViewConfig]  # image: side of the square network input and its norm (HigherHRNet 512)
    backbone: BackboneConfig  # resnet18 | resnet50 (paper: HRNet-W32, not in torchvision; see models/benet.py)
    pyramid_channels: int = at_least(1)  # the FPN's width at every level (HRNet-W32's 1/4 stream: 32)
    attention: bool  # a channel + spatial attention module on each pyramid level (the paper's CBAM-like modules)
    dense: BENetDenseConfig
    classifier: BENetClassifierConfig
    centre_prior: float = within(0, 1, low_open=True, high_open=True)  # initial centre score (CenterNet 0.1)
    loss: BENetLossConfig
    decode: BENetDecodeConfig
    pre_transforms: BENetPreTransformConfig
    train: dict[str, Any]  # train.* values this model trains with (paper: Adam, lr 1e-3, 250 epochs)

    def __post_init__(self) -> None:
        check_views(self.views, VIEWS, SECTION)
        if self.backbone.name not in RESNETS:
            raise ConfigError(f"{SECTION}.backbone.name must be one of {list(RESNETS)} (the FPN taps a ResNet's "
                              f"layer1..layer4; paper HRNet-W32), got {self.backbone.name!r}")
        if self.decode.nms_kernel % 2 != 1:
            raise ConfigError(f"{SECTION}.decode.nms_kernel must be odd (a window centred on the peak; "
                              f"CenterNet 3), got {self.decode.nms_kernel}")
