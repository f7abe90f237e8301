"""CPU forward+backward time and parameter counts of the rrla network.

    python benchmarks/bench_model.py [--iterations 2] [--warmup 1] [--batch 32] [--objects 50]

Two variants, on top of params.yaml's model.rrla section (BOA heads/dim, BPA, ELD sizes):
- resnet18 on 112 px body crops, 50-d label embeddings (the offline demo),
- resnet50 on 224 px body crops, 300-d label embeddings (the paper).
Both with EMOTIC's 26 classes (so rrla reads the body view), N objects per image (all valid)
and random inputs, on CPU; the loss is the training criterion (`build_criterion`, train.loss
weighted_mse). Prints a table and writes reports/bench_model.json.
"""
from __future__ import annotations

import argparse
import dataclasses
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
from models.output import ModelOutput  # noqa: F401  (what the model returns and the criterion reads)

REPO = Path(__file__).resolve().parents[1]
NUM_CLASSES = 26
VARIANTS = (
    {"name": "resnet18@112 (demo)", "backbone": "resnet18", "input_size": 112, "embedding_dim": 50},
    {"name": "resnet50@224 (paper)", "backbone": "resnet50", "input_size": 224, "embedding_dim": 300},
)
PARTS = ("backbone", "bpa", "body_proj", "boa", "eld", "classifier")


def count_parameters(module: torch.nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def random_batch(batch: int, num_objects: int, input_size: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """A batch as the loader gives it: the model's inputs (body view, objects view) and the target."""
    body = torch.randn(batch, 3, input_size, input_size, generator=gen)
    feats = torch.randn(batch, num_objects, 2048, generator=gen).abs().to(torch.float16)
    corner = torch.rand(batch, num_objects, 2, generator=gen) * 400
    boxes = torch.cat([corner, corner + torch.rand(batch, num_objects, 2, generator=gen) * 150 + 4], -1)
    mask = torch.ones(batch, num_objects, dtype=torch.bool)
    person = torch.tensor([[100.0, 50.0, 260.0, 420.0]]).repeat(batch, 1)
    targets = (torch.rand(batch, NUM_CLASSES, generator=gen) < 0.2).float()
    return {"body": body, "obj_feats": feats, "obj_boxes": boxes, "obj_mask": mask, "person_box": person,
            "target": targets, "index": torch.arange(batch)}


def bench_variant(variant: dict, args: argparse.Namespace) -> dict:
    cfg = load_params(REPO / args.params).model.rrla
    cfg = replace_path(cfg, "backbone.name", variant["backbone"])
    cfg = dataclasses.replace(cfg, views={**cfg.views, "body": dataclasses.replace(cfg.views["body"],
                                                                                  size=variant["input_size"])})
    cfg = replace_path(cfg, "backbone.pretrained", False)
    cfg = replace_path(cfg, "backbone.weights", None)
    cfg = replace_path(cfg, "boa.max_objects", None)
    rng = np.random.default_rng(0)
    cooccurrence = rng.random((NUM_CLASSES, NUM_CLASSES)).astype(np.float32)
    np.fill_diagonal(cooccurrence, 0.0)
    embeddings = rng.standard_normal((NUM_CLASSES, variant["embedding_dim"])).astype(np.float32)
    torch.manual_seed(0)
    model = build_model("rrla", cfg, num_classes=NUM_CLASSES, task="multilabel",
                        cooccurrence=cooccurrence, label_embeddings=embeddings).train()
    assert model.person_view == "body"
    criterion = build_criterion(model, "weighted_mse", np.full(NUM_CLASSES, 0.1))
    gen = torch.Generator().manual_seed(0)
    batch = random_batch(args.batch, args.objects, variant["input_size"], gen)
    inputs = {key: batch[key] for key in ("body", "obj_feats", "obj_boxes", "obj_mask", "person_box")}

    times = []
    for step in range(args.warmup + args.iterations):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        loss = criterion(model(inputs), batch)
        loss.backward()
        elapsed = time.perf_counter() - start
        if step >= args.warmup:
            times.append(elapsed)

    parts = {part: count_parameters(getattr(model, part, None)) for part in PARTS}
    return {
        "variant": variant["name"],
        "model": "rrla",
        "backbone": variant["backbone"],
        "input_size": variant["input_size"],
        "label_embedding_dim": variant["embedding_dim"],
        "boa_heads": cfg.boa.heads,
        "boa_dim": cfg.boa.dim,
        "batch": args.batch,
        "objects": args.objects,
        "seconds_per_batch": times,
        "median_seconds_per_batch": statistics.median(times),
        "parameters": parts,
        "parameters_total": count_parameters(model),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--objects", type=int, default=50)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default="reports/bench_model.json")
    args = parser.parse_args()

    results = [bench_variant(v, args) for v in VARIANTS]
    report = {
        "device": "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        # Other jobs share the CPU: the 1-minute load average says how contended the run was.
        "load_average_after": os.getloadavg()[0],
        "warmup": args.warmup,
        "iterations": args.iterations,
        "results": results,
    }
    out = REPO / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")

    print(f"CPU forward+backward, batch {args.batch}, {args.objects} objects, {torch.get_num_threads()} threads")
    for r in results:
        print(f"{r['variant']:>22}: {r['median_seconds_per_batch']:.2f} s/batch "
              f"(runs {', '.join(f'{t:.2f}' for t in r['seconds_per_batch'])}); "
              f"params total {r['parameters_total']:,}")
        print("    " + ", ".join(f"{k} {v:,}" for k, v in r["parameters"].items()))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
