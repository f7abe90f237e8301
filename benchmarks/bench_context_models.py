"""CPU forward+backward time per batch and parameter counts per module of SIB-Net and DAG-Net
(DAG-Net also with its trunks frozen, on the tensors the frozen-backbone cache holds).

    python benchmarks/bench_context_models.py [--iterations 3] [--warmup 1] [--batch 32] [--paper]

Each model is built from params.yaml's `model.<name>` section (the demo sizes) and, with
`--paper`, also at the papers' sizes (SIB-Net: three ResNet-18 at 230 px; DAG-Net: ResNet-50
body and ResNet-18 context at 224 px, N = 4). Inputs are random tensors of exactly the shapes
the loader gives (`model.view_specs`: [B,3,S,S] per view, [B,N*N,3,s,s] for the patches), the
loss is the family's training criterion (`build_criterion`), EMOTIC's 26 classes. One step =
zero_grad, forward, loss, backward (no optimiser step: its cost is the optimiser's, not the
model's). Prints a table and writes reports/bench_context_models.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from core.params import load_params
from models import build_criterion, build_model
from models.config import replace_path

REPO = Path(__file__).resolve().parents[1]
NUM_CLASSES = 26
MODELS = ("sibnet", "dagnet")
FROZEN_PATH = ("dagnet",)  # also timed with its trunks frozen: the step a frozen-backbone sweep trial takes
# The papers' sizes (--paper), as dotted overrides of the demo section.
PAPER = {
    "sibnet": {"views.image_face_masked.size": 230, "views.image_body_masked.size": 230, "views.image.size": 230},
    "dagnet": {"views.body.size": 224, "views.image_body_masked.size": 224, "views.patches.size": 224,
               "body_backbone.name": "resnet50", "lsam.n": 4},
}


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def random_batch(model: torch.nn.Module, batch: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """The model's inputs as the loader shapes them, plus a multi-hot target."""
    inputs = {}
    for name, spec in model.view_specs.items():
        if name not in model.views:
            continue
        shape = (batch, spec.grid ** 2, 3, spec.size, spec.size) if spec.grid else (batch, 3, spec.size, spec.size)
        inputs[name] = torch.randn(*shape, generator=gen)
    target = (torch.rand(batch, NUM_CLASSES, generator=gen) < 0.2).float()
    target[:, 0] = torch.where(target.sum(1) == 0, torch.ones(batch), target[:, 0])  # every person has a label
    return {**inputs, "target": target, "index": torch.arange(batch)}


def bench(name: str, cfg, variant: str, args: argparse.Namespace, frozen: bool = False) -> dict:
    for side in ("backbone", "body_backbone", "context_backbone"):
        if hasattr(cfg, side):
            cfg = replace_path(replace_path(cfg, f"{side}.pretrained", False), f"{side}.weights", None)
    torch.manual_seed(0)
    model = build_model(name, cfg, num_classes=NUM_CLASSES, task="multilabel", load_pretrained=False).train()
    criterion = build_criterion(model, "bce", np.full(NUM_CLASSES, 0.1), seed=0)
    batch = random_batch(model, args.batch, torch.Generator().manual_seed(0))
    inputs = {key: value for key, value in batch.items() if key in model.views}
    if frozen:  # what the frozen-backbone cache would hold (models/frozen.py); the trunks are not run
        model.eval()
        with torch.no_grad():
            cached = {key: part.encode(inputs[part.view]) for key, part in model.frozen_inputs().items()}
        model.freeze_backbone()
        model.train()
        inputs = {**cached, **{key: value for key, value in inputs.items() if key in model.views}}
    times = []
    for step in range(args.warmup + args.iterations):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        criterion(model(inputs), batch).backward()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {
        "model": name, "variant": variant, "batch": args.batch,
        "views": {key: list(value.shape[1:]) for key, value in inputs.items()},
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "seconds_per_batch": [round(t, 3) for t in times], "median_seconds_per_batch": round(median, 3),
        "samples_per_s": round(args.batch / median, 2),
        "parameters": {child: count_parameters(module) for child, module in model.named_children()},
        # one level down: GSAM's extractor / perception layer / attention branch, LSAM's encoder / adjacency / GCN
        "parameters_detail": {f"{child}.{name}": count_parameters(sub) for child, module in model.named_children()
                              for name, sub in module.named_children()},
        "parameters_total": count_parameters(model),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--paper", action="store_true", help="also at the papers' input sizes and backbones")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default="reports/bench_context_models.json")
    args = parser.parse_args()

    params = load_params(REPO / args.params)
    results = []
    for name in MODELS:
        cfg = params.model.family(name)
        results.append(bench(name, cfg, "demo (params.yaml)", args))
        if name in FROZEN_PATH:
            results.append(bench(name, cfg, "demo, frozen trunks", args, frozen=True))
        if args.paper:
            results.append(bench(name, paper_config(cfg, PAPER[name]), "paper sizes", args))
    report = {
        "device": "cpu", "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.machine(), "cpu_count": os.cpu_count(),
        "load_average_after": os.getloadavg()[0],  # other jobs on the machine slow every figure
        "warmup": args.warmup, "iterations": args.iterations, "results": results,
    }
    out = REPO / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"CPU forward+backward, batch {args.batch}, {torch.get_num_threads()} threads")
    for r in results:
        print(f"{r['model']:>7} {r['variant']:<19} {r['median_seconds_per_batch']:6.2f} s/batch "
              f"({r['samples_per_s']:.1f} samples/s; runs {', '.join(map(str, r['seconds_per_batch']))}), "
              f"{r['parameters_total'] / 1e6:.2f} M parameters; views {r['views']}")
        print("        " + ", ".join(f"{k} {v:,}" for k, v in r["parameters"].items()))
        print("        " + ", ".join(f"{k} {v:,}" for k, v in r["parameters_detail"].items()
                                     if k.split(".")[0] in ("context", "lsam", "scm", "icm", "bam")))
    print(f"wrote {out}")


def paper_config(cfg, overrides: dict):
    """`cfg` with the dotted `overrides`; the view sizes change together (SIB-Net's ICM needs one size)."""
    import dataclasses

    views = dict(cfg.views)
    for dotted, value in overrides.items():
        if dotted.startswith("views."):
            _, view, key = dotted.split(".")
            views[view] = dataclasses.replace(views[view], **{key: value})
    cfg = dataclasses.replace(cfg, views=views)
    for dotted, value in overrides.items():
        if not dotted.startswith("views."):
            cfg = replace_path(cfg, dotted, value)
    return cfg


if __name__ == "__main__":
    main()
