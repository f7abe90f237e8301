"""The benchmark helpers that decide what `make bench` reports: the goal summary's arithmetic, the
public-code reference step bench_kosti times ours against, and the demo bench's stage clock."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_demo  # noqa: E402
import public_kosti  # noqa: E402
import summary  # noqa: E402


def test_the_reference_losses_give_the_public_codes_own_check_values():
    # The public loss module's self-check: dynamic discrete loss 37.1217, smooth L1 (x10) 4.8750
    target = torch.zeros(2, 26)
    target[0, 0:13] = 1
    target[1, 13:] = 2
    target[:, 13] = 0
    assert public_kosti.discrete_loss(torch.ones(2, 26), target).item() == pytest.approx(37.1217, abs=1e-4)
    vad_target = torch.tensor([[0.9] * 3, [0.2] * 3])
    vad_pred = torch.tensor([[0.7] * 3, [0.25] * 3])
    assert public_kosti.continuous_loss(vad_pred * 10, vad_target * 10).item() == pytest.approx(4.875)


def test_dynamic_weights_are_one_over_log_count_and_tiny_for_absent_classes():
    target = torch.zeros(4, 26)
    target[:3, 0] = 1
    target[0, 5] = 1
    weights = public_kosti.dynamic_weights(target)
    assert weights.shape == (1, 26)
    assert weights[0, 0].item() == pytest.approx(1 / torch.log(torch.tensor(4.2)).item())
    assert weights[0, 5].item() == pytest.approx(1 / torch.log(torch.tensor(2.2)).item())
    assert weights[0, 1].item() == pytest.approx(1e-4)


def test_the_reference_step_trains_all_three_modules():
    step = public_kosti.PublicKostiStep(seed=0)
    before = [p.detach().clone() for m in (step.context, step.body, step.head) for p in m.parameters()]
    assert step(public_kosti.random_batch(4, 32, 48)) == 4
    after = [p.detach() for m in (step.context, step.body, step.head) for p in m.parameters()]
    changed = sum(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert changed == len(before)  # Adam moves every parameter that got a gradient; all did


def test_stage_seconds_run_from_one_stage_line_to_the_next():
    stamped = [(1.0, "[demo] dvc repro evaluate"), (2.0, "Running stage 'ingest':"), (5.5, "ingest: 10 rows"),
               (7.0, "Running stage 'train':"), (40.0, "[demo] writing the report"), (44.0, "[demo] finished in 44 s")]
    assert bench_demo.stage_seconds(stamped, end=45.0) == {"ingest": 5.0, "train": 33.0}


TRAIN = {
    "rows": [
        {"runner": "in-process", "workers": 1, "loader": "dataloader", "samples_per_s": 50.0, "peak_pss_mib": 2900,
         "achieved": {"gflop_per_s": 175.0, "fraction_of_matmul_peak": 0.8}, "all_samples_per_s": [49.0, 50.0]},
        {"runner": "ray-train", "workers": 1, "loader": "dataloader", "samples_per_s": 46.0, "peak_pss_mib": 4096,
         "peak_pss_by_process_mib": {"ray::RayTrainWorker": 2900, "driver": 500}, "all_samples_per_s": [46.0]},
    ],
    "ratios": {"ray_train_vs_in_process_dataloader": 0.92, "ray_train_vs_in_process_in-memory": 0.88},
    "step": {"flops": {"gflop_per_sample": 3.5}, "matmul_peak": {"gflop_per_s": 218.0}},
    "machine": {"cpu_model": "Example CPU", "cpus": 2},
}


def test_the_summary_reads_each_goal_from_its_report_and_judges_it():
    rows = summary.summarise({"bench_train": TRAIN, "bench_objects": {
        "auto": {"engine": "local", "reason": "2 CPUs", "over_local": 1.0}, "data": {"images": 48},
        "ray": {"images_per_s": 3.3}, "local": {"images_per_s": 8.0}, "identical_arrays": True,
        "max_abs_feature_difference": 0.0625, "max_feature_fp16_steps_apart": 0.5, "machine": {"cpus": 2}}})
    by_figure = {row["figure"]: row for row in rows}
    ray = by_figure["Ray Train 1 worker / in-process, samples/s"]
    assert (ray["now"], ray["met"], ray["before"]) == (0.92, True, 0.73)
    peak = by_figure["training step, fraction of the fp32 matmul peak"]
    assert (peak["now"], peak["met"]) == (0.8, True)
    memory = by_figure["peak PSS of 1-worker training under Ray Train, GiB"]
    assert (memory["now"], memory["met"]) == (4.0, False)
    objects = by_figure["objects stage, engine auto / plain loop, images/s"]
    assert objects["met"] is True and "at most 0.5 float16 steps" in objects["detail"]
    # every row says which machine its report was measured on; an older report named no CPU
    assert ray["machine"] == memory["machine"] == "Example CPU, 2 CPUs"
    assert objects["machine"] == "CPU not recorded, 2 CPUs"
    # reports not there: the rows say so and how to make them, and judge nothing
    missing = [row for row in rows if row["source"] in ("bench_demo", "bench_kosti")]
    assert len(missing) == 3 and all(row["met"] is None and "not measured" in row["detail"] for row in missing)
    assert all(row["machine"] is None for row in missing)
    table = summary.render(rows)
    assert "NO" in table and "yes" in table and "python benchmarks/bench_demo.py" in table
    assert "measured on: Example CPU, 2 CPUs" in table


def test_paired_ratios_divide_each_rounds_ray_run_by_the_same_rounds_in_process_run():
    import bench_train

    runs = {("in-process", 1, "dataloader"): [{"samples_per_s": 50.0}, {"samples_per_s": 40.0}, {"samples_per_s": 48.0}],
            ("ray-train", 1, "dataloader"): [{"samples_per_s": 45.0}, {"samples_per_s": 40.0}, {"samples_per_s": 43.2}]}
    assert bench_train.paired_ratios(runs) == {"dataloader": {"by_round": [0.9, 0.9, 1.0], "median": 0.9}}
    runs = {key: value[:2] for key, value in runs.items()}
    assert bench_train.paired_ratios(runs)["dataloader"]["median"] == 0.95
