"""Everything a long command prints goes to a log file; the terminal shows the readable part.

`ctxemo demo` and `ctxemo stage NAME` run inside `session(workspace, name)`: it creates
`logs/<name>-<YYYYmmdd-HHMMSS>.log` in the workspace, prints its path at the start and at the
end, and copies this process's own output into it as well as to the terminal. `call(cmd)` runs
a child process (`dvc repro`, a stage) with its output (stdout and stderr in one pipe, so that
their lines keep their order) going through the same copy:

- the file gets every line (Ray's too) without colour codes, and of a progress bar only its last
  state: a bar redraws itself with carriage returns, and its redraws would fill the file;
- the terminal gets the bars live and every line except Ray's routine chatter (`TerminalFilter`):
  records that Ray's processes log at INFO or DEBUG (lines with Ray's "(Name pid=N)" prefix, or
  a timestamp and a level) and known noise (`NOISE`). A Ray process's line that is ctxemo's own
  ("[train] epoch ...") is shown without Ray's prefix; one that speaks of a warning, an error, a
  failure, ... is shown whole, with the indented lines that continue it.

The children write into a pipe, so they are told what the user has (CTXEMO_PROGRESS=bar and
COLUMNS when the terminal is one, core/progress.py); PYTHONUNBUFFERED keeps their lines in order.
"""
from __future__ import annotations

import codecs
import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
import threading
import traceback
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import TextIO

from core import env

LOG_DIR = "logs"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
SEPARATORS = re.compile(r"(\r\n|\r|\n)")
RAY_PREFIX = re.compile(r"^\((?P<who>[^()]*pid=\d+[^()]*)\) ?")
# Python logging as Ray ("2026-11-30 10:09:25,432\tINFO worker.py:2038 -- ...") and MLflow
# ("2026/11/30 10:20:43 INFO mlflow.store.db.utils: ...") format it
PY_RECORD = re.compile(r"^\d{4}[-/]\d\d[-/]\d\d \d\d:\d\d:\d\d(?:,\d+)?\s+(?P<level>DEBUG|INFO|WARNING|ERROR|CRITICAL)\b")
# Ray's C++ logs: "[2026-11-30 10:12:47,882 E 15053 15053] core_worker.cc:2465: ..."
CPP_RECORD = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (?P<level>[DIWEF]) \d+ \d+\]")
QUIET_LEVELS = frozenset({"DEBUG", "INFO", "D", "I"})
CTXEMO_LINE = re.compile(r"^\[[a-z][\w-]*\] ")
TROUBLE = re.compile(r"warn|error|exception|traceback|fail|fatal|died|killed|out of memory", re.IGNORECASE)
# Logged at ERROR level, yet routine here (a line is noise when it holds every part of one entry):
# Ray Data's actor pool gets the objects stage's weights through the object store, which the
# driver holds until the pool is done; and at Ray's shutdown the GCS fails to kill actors whose
# worker processes have already exited (their socket is closed).
NOISE = (("has constructor arguments in the object store and max_restarts > 0",),
         ("KillActor RPC failed for actor", "Socket closed"))


def log_path(workspace: Path, name: str, when: datetime | None = None) -> Path:
    """`<workspace>/logs/<name>-<YYYYmmdd-HHMMSS>.log`."""
    return Path(workspace) / LOG_DIR / f"{name}-{(when or datetime.now()):%Y%m%d-%H%M%S}.log"


def _create(path: Path) -> Path:
    """Create `path`, or `<stem>-2.log`, ... when a run in the same second has it already."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, 100):
        candidate = path if attempt == 1 else path.with_name(f"{path.stem}-{attempt}{path.suffix}")
        try:
            candidate.touch(exist_ok=False)
            return candidate
        except FileExistsError:
            continue
    raise FileExistsError(f"{path} and 98 more names like it exist")


def shown_path(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    return str(path)


class TerminalFilter:
    """Which lines of a child's output the terminal shows, and how (see the module docstring)."""

    def __init__(self) -> None:
        self._last_shown: dict[str, bool] = {}  # per process ("" for lines without Ray's prefix)

    def __call__(self, line: str) -> str | None:
        """The text the terminal shows for `line` (without colour codes), or None: the file only."""
        prefix = RAY_PREFIX.match(line)
        who = prefix.group("who") if prefix else ""
        message = line[prefix.end():] if prefix else line
        record = PY_RECORD.match(message) or CPP_RECORD.match(message)
        if any(all(part in message for part in noise) for noise in NOISE):
            shown = None
        elif message[:1].isspace() and who in self._last_shown:  # continues the line before it
            shown = line if self._last_shown[who] else None
        elif record is not None:
            shown = None if record.group("level") in QUIET_LEVELS else line
        elif prefix is None:
            shown = line
        elif CTXEMO_LINE.match(message):
            shown = message
        else:
            shown = line if TROUBLE.search(message) else None
        self._last_shown[who] = shown is not None
        return shown


class _Channel:
    """One output stream: its lines to the file, the readable ones (and bars, live) to `terminal`."""

    def __init__(self, session: Session, terminal: TextIO, terminal_filter: TerminalFilter | None) -> None:
        self.session, self.terminal, self.filter = session, terminal, terminal_filter
        self.line = ""           # the current line so far (after its last carriage return)
        self.redrawing = False   # the current line is a progress bar redrawn in place

    def feed(self, text: str) -> None:
        with self.session.lock:
            for piece in SEPARATORS.split(text):
                if piece in ("\n", "\r\n"):
                    self._end_line()
                elif piece == "\r":
                    self._carriage_return()
                elif piece:
                    self.line += piece
                    if self.redrawing:
                        self.terminal.write(piece)
            self.terminal.flush()

    def close(self) -> None:
        if self.line or self.redrawing:
            self.feed("\n")

    def _carriage_return(self) -> None:
        if not self.redrawing:
            self.redrawing = True
            self.terminal.write(self.line)
        self.terminal.write("\r")
        self.line = ""

    def _end_line(self) -> None:
        line, self.line = ANSI.sub("", self.line).rstrip(), ""
        if self.redrawing:  # the bar's last state: a line of the file, already on the terminal
            self.redrawing = False
            self.terminal.write("\n")
            if line:
                self.session.write_file(line)
            return
        self.session.write_file(line)
        shown = line if self.filter is None else self.filter(line)
        if shown is not None:
            self.terminal.write(shown + "\n")


class _Tee(io.TextIOBase):
    """This process's sys.stdout or sys.stderr during a session: the file and the terminal."""

    def __init__(self, channel: _Channel) -> None:
        super().__init__()
        self.channel = channel

    def write(self, text: str) -> int:
        self.channel.feed(text)
        return len(text)

    def flush(self) -> None:
        self.channel.terminal.flush()

    def isatty(self) -> bool:
        return self.channel.terminal.isatty()

    def fileno(self) -> int:
        return self.channel.terminal.fileno()

    @property
    def encoding(self) -> str:
        return getattr(self.channel.terminal, "encoding", "utf-8")


class Session:
    """The open log file and the terminal streams it copies to."""

    def __init__(self, path: Path, file: TextIO, terminal_out: TextIO, terminal_err: TextIO) -> None:
        self.path, self.file, self.out, self.err = path, file, terminal_out, terminal_err
        self.lock = threading.RLock()

    def write_file(self, line: str) -> None:
        self.file.write(line + "\n")
        self.file.flush()

    def run(self, cmd: Sequence[str], cwd: Path | str | None = None, environ: dict[str, str] | None = None) -> int:
        """Run `cmd`, its output (stdout and stderr, in order) through the copy; its exit status."""
        child_env = dict(env.current() if environ is None else environ)
        child_env.setdefault("PYTHONUNBUFFERED", "1")
        if self.out.isatty():
            child_env.setdefault("CTXEMO_PROGRESS", "bar")
            child_env.setdefault("COLUMNS", str(shutil.get_terminal_size().columns))
        with self.lock:
            self.write_file(f"$ {' '.join(map(str, cmd))}")
        channel = _Channel(self, self.out, TerminalFilter())
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        with subprocess.Popen(list(map(str, cmd)), cwd=cwd, env=child_env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT) as proc:
            try:
                while chunk := os.read(proc.stdout.fileno(), 65536):
                    channel.feed(decoder.decode(chunk))
                channel.feed(decoder.decode(b"", final=True))
                channel.close()
                return proc.wait()
            except BaseException:  # Ctrl-C included: as subprocess.call does, the child goes too
                proc.kill()
                raise


_active: Session | None = None


def call(cmd: Sequence[str], cwd: Path | str | None = None, environ: dict[str, str] | None = None) -> int:
    """`subprocess.call(cmd)`, through the open session's copy when there is one."""
    if _active is None:
        return subprocess.call(list(map(str, cmd)), cwd=cwd, env=environ)
    return _active.run(cmd, cwd=cwd, environ=environ)


@contextlib.contextmanager
def session(workspace: Path, name: str, tag: str | None = None) -> Iterator[Path]:
    """The block's output (and that of `call` in it) copied to a new log file; yields its path.

    Its path is printed as `[tag] full log: PATH` at the start and at the end (also when the
    block fails; the file then ends with the traceback).
    """
    global _active
    if _active is not None:  # nested: the outer session's file has it all already
        yield _active.path
        return
    path = _create(log_path(workspace, name))
    announce = f"[{tag or name}] full log: {shown_path(path)}"
    terminal_out, terminal_err = sys.stdout, sys.stderr
    with path.open("a", encoding="utf-8") as file:
        current = _active = Session(path, file, terminal_out, terminal_err)
        current.write_file(f"# {' '.join(sys.argv)} (in {Path.cwd()}, {datetime.now():%Y-%m-%d %H:%M:%S})")
        sys.stdout = _Tee(_Channel(current, terminal_out, None))
        sys.stderr = _Tee(_Channel(current, terminal_err, None))
        print(announce, flush=True)
        try:
            yield path
        except BaseException as exc:
            current.write_file("".join(traceback.format_exception(exc)).rstrip())
            raise
        finally:
            for tee in (sys.stdout, sys.stderr):
                if isinstance(tee, _Tee):
                    tee.channel.close()
            sys.stdout, sys.stderr, _active = terminal_out, terminal_err, None
            print(announce, file=terminal_out, flush=True)
