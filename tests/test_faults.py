"""core/faults.py: the `sleep` action and `armed`, which the cluster drill (tests/test_cluster.py) relies on.
The other actions are exercised where they stand for real failures (test_train, test_sweep, test_flows)."""
from __future__ import annotations

import pytest

from core import faults


def test_a_sleep_fault_holds_the_process_once_and_records_where(monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr(faults.time, "sleep", slept.append)
    hold = faults.Fault("train.after_epoch", when={"epoch": 0}, action="sleep", seconds=2.5)
    with faults.inject(hold) as injection:
        faults.fault_point("train.after_epoch", epoch=1, rank=0)   # not its epoch
        faults.fault_point("train.after_epoch", epoch=0, rank=1)   # holds
        faults.fault_point("train.after_epoch", epoch=0, rank=0)   # times=1: already fired
        fired = injection.fired("train.after_epoch")
    assert slept == [2.5]
    assert [(f["epoch"], f["rank"]) for f in fired] == [(0, 1)]


@pytest.mark.parametrize("seconds", [None, 0, -1, "10"])
def test_a_sleep_fault_needs_positive_seconds(seconds):
    with pytest.raises(ValueError, match="a sleep fault needs seconds > 0"):
        faults.Fault("train.after_epoch", action="sleep", seconds=seconds)


def test_armed_says_whether_the_plan_holds_a_fault_for_the_point():
    assert not faults.armed("train.after_epoch")        # no plan written
    with faults.inject(faults.Fault("flow.step", when={"step": "evaluate"})):
        assert faults.armed("flow.step") and not faults.armed("train.after_epoch")
    assert not faults.armed("flow.step")
