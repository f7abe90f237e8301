"""Named fault points: failures injected from outside the code, for fault-tolerance tests and drills.

The code marks each place where a real failure must be survived with `fault_point(name, **where)`:

| point | where | runs in | stands for |
|---|---|---|---|
| `train.after_epoch` | epoch, rank | each Ray Train worker, once the epoch's checkpoint is committed | a lost worker or node |
| `sweep.trial_epoch` | trial_id, epoch | a Ray Tune trial, after reporting the epoch | a crashing trial |
| `sweep.trial_result` | trial_id, epoch | the sweep driver, at each trial result | Ctrl-C, a preempted driver |
| `flow.step` | step, attempt | a Prefect task of pipelines/flows.py, before its work | a failing step |

(Both "after reporting" points come after the epoch's checkpoint is reported, so a recovery
continues from that epoch.)

A fault point does nothing (an environment lookup, and a file check while the variable is set) unless
the environment variable CTXEMO_FAULTS (read through core/env.py, `faults_plan_file()`) names a plan
file that exists:

    {"faults": [{"point": "train.after_epoch", "when": {"epoch": 0, "rank": 0}, "action": "exit",
                 "times": 1, "stick_to": null, "signal": null, "seconds": null}]}

`when` lists values the point's `where` must have; `action` is `raise` (InjectedFault: a step or
trial that crashes), `exit` (os._exit(1): a process that dies with no clean-up, like a lost node),
`signal` (the named signal to this process, only if it has a Python handler for it: Ray Tune's
SIGUSR1 or SIGINT handler saves the experiment and stops, like Ctrl-C; without a handler the
default action would kill the process) or `sleep` (`seconds` of sleep, then on: a process that
hangs, held at a known point while a drill does something from outside, such as killing its node); `times` is how often the fault fires in all, across all
processes (null: every time); `stick_to` names a `where` key whose value the first firing fixes:
later firings need the same value (one trial that crashes every time, retried or not).

Every firing is one JSON line in `<plan>.fired`, written under an exclusive lock (flock) before
the fault acts, so `times` holds across processes and the firings can be read back (`fired`).

Why an environment variable: Ray workers, Prefect tasks running on Ray and DVC stage
subprocesses all inherit the environment of the process that starts them, so a plan reaches
every process without a hook in any config or signature. Ray workers inherit the environment of
the moment Ray starts: name the plan file before that (tests/conftest.py sets CTXEMO_FAULTS for
the whole test session) and write the plan later with `inject`, which removes it afterwards.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from core import env

ACTIONS = ("raise", "exit", "signal", "sleep")
ENV_VAR = "CTXEMO_FAULTS"


class InjectedFault(RuntimeError):
    """The failure a `raise` fault injects."""


@dataclass(frozen=True)
class Fault:
    """One entry of a plan (the fields are the plan's JSON keys; see the module docstring)."""

    point: str
    action: str = "raise"
    when: Mapping[str, Any] = field(default_factory=dict)
    times: int | None = 1
    stick_to: str | None = None
    signal: str | None = None
    seconds: float | None = None

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"fault action must be one of {ACTIONS}, not {self.action!r}")
        if self.action == "signal" and not hasattr(signal.Signals, str(self.signal)):
            raise ValueError(f"a signal fault needs a signal name such as 'SIGUSR1', not {self.signal!r}")
        if self.action == "sleep" and not (isinstance(self.seconds, (int, float)) and self.seconds > 0):
            raise ValueError(f"a sleep fault needs seconds > 0, not {self.seconds!r}")

    def applies(self, point: str, where: Mapping[str, Any]) -> bool:
        return point == self.point and all(where.get(key) == value for key, value in self.when.items())


def fault_point(point: str, **where: Any) -> None:
    """Inject the faults the active plan holds for `point` at `where`; nothing without a plan."""
    plan_file = env.faults_plan_file()
    if plan_file is None:
        return
    for index, fault in enumerate(_read_plan(Path(plan_file))):
        if fault.applies(point, where) and _claim(_log_file(plan_file), index, fault, point, where):
            _act(fault, point, where)


def armed(point: str) -> bool:
    """Whether the active plan holds a fault for `point` (anywhere): code that must reach a known state
    before a fault can fire there (a committed checkpoint) waits only when one may."""
    plan_file = env.faults_plan_file()
    return plan_file is not None and any(fault.point == point for fault in _read_plan(Path(plan_file)))


def fired(plan_file: str | Path) -> list[dict[str, Any]]:
    """The firings of a plan so far, in order: {"fault": index, "point", "pid", **where} each."""
    log = _log_file(plan_file)
    if not log.is_file():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


class Injection:
    """The firings of one `inject` block: read live inside it, kept as they were after it."""

    def __init__(self, plan_file: Path) -> None:
        self.plan_file = plan_file
        self._final: list[dict[str, Any]] | None = None

    def fired(self, point: str | None = None) -> list[dict[str, Any]]:
        records = fired(self.plan_file) if self._final is None else self._final
        return [r for r in records if point is None or r["point"] == point]


@contextlib.contextmanager
def inject(*faults: Fault) -> Iterator[Injection]:
    """Write `faults` as the plan for the block; the plan and its firings are removed afterwards.

    The plan goes to the file CTXEMO_FAULTS names (so processes started earlier, such as Ray
    workers, see it). Without the variable a temporary file is named for the block: that
    reaches subprocesses and a Ray started inside the block, not one already running.
    """
    with contextlib.ExitStack() as stack:
        plan_file = env.faults_plan_file()
        if plan_file is None:
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="ctxemo-faults-"))
            plan_file = str(Path(folder) / "plan.json")
            stack.enter_context(env.temporarily({ENV_VAR: plan_file}))
        plan = Path(plan_file)
        plan.parent.mkdir(parents=True, exist_ok=True)
        _log_file(plan).unlink(missing_ok=True)
        plan.write_text(json.dumps({"faults": [dataclasses.asdict(f) for f in faults]}, indent=2, default=dict))
        injection = Injection(plan)
        try:
            yield injection
        finally:
            injection._final = fired(plan)
            plan.unlink(missing_ok=True)
            _log_file(plan).unlink(missing_ok=True)


def _log_file(plan_file: str | Path) -> Path:
    return Path(f"{plan_file}.fired")


def _read_plan(plan_file: Path) -> list[Fault]:
    try:
        text = plan_file.read_text()
    except FileNotFoundError:
        return []
    return [Fault(**entry) for entry in json.loads(text).get("faults", [])]


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _claim(log: Path, index: int, fault: Fault, point: str, where: Mapping[str, Any]) -> bool:
    """Record one firing of fault `index` unless it fired as often as asked (or stuck elsewhere)."""
    record = {"fault": index, "point": point, "pid": os.getpid(), **_jsonable(dict(where))}
    with open(log, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released on close; other processes wait here
        handle.seek(0)
        earlier = [r for r in map(json.loads, filter(str.strip, handle.read().splitlines())) if r["fault"] == index]
        if fault.stick_to is not None and earlier and earlier[0].get(fault.stick_to) != record.get(fault.stick_to):
            return False
        if fault.times is not None and len(earlier) >= fault.times:
            return False
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())  # an `exit` fault ends the process right after this
    return True


def _act(fault: Fault, point: str, where: Mapping[str, Any]) -> None:
    described = ", ".join(f"{key}={value!r}" for key, value in where.items())
    message = f"injected fault at {point} ({described})"
    print(f"[faults] {message}: {fault.action}", file=sys.stderr, flush=True)
    if fault.action == "raise":
        raise InjectedFault(message)
    if fault.action == "exit":
        os._exit(1)
    if fault.action == "sleep":
        time.sleep(float(fault.seconds))
        return
    number = signal.Signals[fault.signal]
    if callable(signal.getsignal(number)):
        os.kill(os.getpid(), number)
