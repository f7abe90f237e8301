"""The DVC workspace side of the `retrain` flow (pipelines/flows.py): which stages it runs and in what
order, one retrain at a time per workspace, and the promoted model's dvc.lock recorded in git.

Stages. `stage_plan(ws, "evaluate")` asks DVC for the stages `dvc repro evaluate` would check, in
the order it would check them (its own planner over the workspace's dvc.yaml, frozen stages cut
from their dependencies as `dvc repro` does): the flow runs each as
`dvc repro --single-item <stage>`, so every stage is a Prefect task run of its own while DVC still
decides whether it is stale. `stage_outcome` reads what DVC said it did from the command's output.

Lock. `workspace_lock` holds an exclusive flock(2) on .dvc/tmp/ctxemo-retrain.lock for the whole
flow run; a second run on the same workspace is refused at once with a message naming the
workspace and the holder (written into the lock file). DVC's own repository lock is taken and
dropped by every `dvc` command, so two flow runs would otherwise interleave their stages and fail
on it midway. The lock is the file system's, not Prefect's: it works with Prefect's ephemeral API
offline, between runs reporting to different APIs, and the kernel drops it when its process dies,
so a crashed run never leaves a stale lock (a Prefect concurrency slot would stay taken until its
lease ran out). Deployments also carry `concurrency_limit: 1`, so Prefect queues their runs first.

Git. After a promotion that was applied, `commit_lock_file` commits dvc.lock and the outputs DVC
leaves to git (`cache: false`: the metrics, plots and summaries, which `dvc push` never uploads),
and nothing else, in the workspace's git repository and tags that commit
`retrain-<flow run>-v<version>`: a clone of that tag plus `dvc pull` is then the whole workspace,
and `dvc status` there finds nothing stale;
`push_tag` sends the tag to the repository's remote. A workspace without git (or with DVC's
`core.no_scm`), or git without a user identity, is logged and skipped: recording never undoes or
fails a promotion.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from core.errors import UserError

LOCK_FILE = Path(".dvc/tmp/ctxemo-retrain.lock")
LOCK_FILE_NAME = "dvc.lock"
GIT_TIMEOUT_SECONDS = 120
GIT_PUSH_TIMEOUT_SECONDS = 600

RAN, UP_TO_DATE, RESTORED, UNKNOWN = "ran", "up to date", "restored from the run cache", "unknown"
# What `dvc repro` logs for a stage (dvc/stage/__init__.py, dvc/stage/run.py, dvc/stage/cache.py).
_OUTCOME_LINES = ((UP_TO_DATE, "'{stage}' didn't change, skipping"),
                  (RESTORED, "Stage '{stage}' is cached - skipping run"),
                  (RAN, "Running stage '{stage}'"))


class WorkspaceBusy(UserError):
    """Another retrain holds the workspace's lock."""


class GitFailed(RuntimeError):
    """A git command exited non-zero; the message holds its output (`output`: git's own words)."""

    def __init__(self, message: str, output: str):
        super().__init__(message)
        self.output = output


# --------------------------------------------------------------------------- stages


def stage_plan(workspace: Path, target: str) -> list[str]:
    """The stages `dvc repro <target>` would check, in DVC's order (upstream first), as the workspace
    addresses them (`<name>` in its dvc.yaml, `<file>:<name>` in another). `target`: a stage of its dvc.yaml."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo
    from dvc.repo.reproduce import get_active_graph, plan_repro

    try:
        with Repo(str(workspace)) as repo:
            # the target by its full path: DVC resolves a bare name against the process's cwd
            stages = repo.stage.collect(f"{Path(repo.root_dir) / 'dvc.yaml'}:{target}")
            return [_address(stage, repo.root_dir) for stage in plan_repro(get_active_graph(repo.index.graph), stages)]
    except DvcException as exc:
        raise UserError(f"cannot plan `dvc repro {target}` in {workspace}: {exc}") from exc


def _address(stage, root: str) -> str:
    """How `dvc repro` run in `root` names the stage (what it logs, what --single-item takes)."""
    file = os.path.relpath(stage.dvcfile.path, root)
    name = getattr(stage, "name", None)
    return file if not name else name if file == "dvc.yaml" else f"{file}:{name}"


def stage_outcome(stage: str, line: str) -> str | None:
    """RAN, UP_TO_DATE or RESTORED when `line` is DVC saying so about `stage`, else None."""
    for outcome, pattern in _OUTCOME_LINES:
        if pattern.format(stage=stage) in line:
            return outcome
    return None


class OutcomeReader:
    """Fed the output lines of `dvc repro --single-item <stage>`: `outcome` is what DVC first said it did."""

    def __init__(self, stage: str):
        self.stage, self.outcome = stage, UNKNOWN

    def __call__(self, line: str) -> None:
        if self.outcome == UNKNOWN:
            self.outcome = stage_outcome(self.stage, line) or UNKNOWN


# --------------------------------------------------------------------------- lock


@contextlib.contextmanager
def workspace_lock(workspace: Path, holder: str) -> Iterator[Path]:
    """Hold the workspace's retrain lock, or raise WorkspaceBusy naming the workspace and its holder."""
    path = Path(workspace) / LOCK_FILE
    if not (Path(workspace) / ".dvc").is_dir():
        raise UserError(f"{workspace} is not a DVC workspace (no .dvc directory): run `dvc init` there first")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            current = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            raise WorkspaceBusy(
                f"workspace {workspace} is busy: {current} holds its retrain lock ({path}). Two runs on one "
                "workspace would collide on DVC's repository lock, so this run stops here: start it again when "
                "that one has finished") from None
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{holder} (pid {os.getpid()} on {socket.gethostname()}, since {started})\n".encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)  # still held: nobody reads a finished run as the holder
    finally:
        os.close(fd)  # releases the lock


# --------------------------------------------------------------------------- git


def git(workspace: Path, *args: str, timeout: float = GIT_TIMEOUT_SECONDS, check: bool = True) -> str:
    """`git ARGS` in the workspace (never prompting); its stdout, or GitFailed with its output."""
    environment = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    done = subprocess.run(["git", *args], cwd=workspace, env=environment, capture_output=True, text=True,
                          timeout=timeout, check=False)
    if check and done.returncode != 0:
        output = (done.stderr or done.stdout).strip()
        raise GitFailed(f"`git {' '.join(args)}` failed with exit code {done.returncode}: {output}", output)
    return done.stdout.strip() if done.returncode == 0 else ""


def release_tag(run_name: str | None, version: str) -> str:
    """`retrain-<flow run name>-v<version>` (a UTC timestamp without a run name), safe as a git ref."""
    name = run_name or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"retrain-{name}-v{version}").strip(".-")


def why_not_git(workspace: Path) -> str | None:
    """Why dvc.lock cannot be committed in `workspace` (no git, no identity, no dvc.lock), or None."""
    from dvc.repo import Repo

    try:
        git(workspace, "rev-parse", "--is-inside-work-tree")
    except FileNotFoundError:
        return "git is not installed"
    except GitFailed as exc:  # git's own words: no repository, or one it refuses (e.g. dubious ownership)
        said = (exc.output.splitlines() or [str(exc)])[-1]
        return f"{workspace} is not a git repository git can use ({said})"
    if not (workspace / LOCK_FILE_NAME).is_file():
        return f"{workspace} has no {LOCK_FILE_NAME}"
    with Repo(str(workspace)) as repo:
        if repo.config["core"].get("no_scm"):
            return f"the DVC workspace {workspace} is set up without git (core.no_scm)"
    name = os.environ.get("GIT_COMMITTER_NAME") or git(workspace, "config", "user.name", check=False)
    email = os.environ.get("GIT_COMMITTER_EMAIL") or git(workspace, "config", "user.email", check=False)
    if not (name and email):
        return (f"git has no user identity in {workspace} (set it: git config user.name ...; "
                "git config user.email ...)")
    return None


def uncached_outputs(workspace: Path) -> list[str]:
    """The stage outputs of the workspace's dvc.yaml that DVC leaves to git (`cache: false`) and that
    exist, relative to the workspace; [] without a readable dvc.yaml."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    workspace = Path(workspace).resolve()
    try:
        with Repo(str(workspace)) as repo:
            paths = {Path(out.fs_path).resolve() for out in repo.index.outs if not out.use_cache}
    except DvcException:
        return []
    return sorted(str(p.relative_to(workspace)) for p in paths if p.exists() and p.is_relative_to(workspace))


def commit_lock_file(workspace: Path, message: str, tag: str, logger) -> dict[str, Any]:
    """Commit dvc.lock and the uncached outputs (when they changed) and tag that commit `tag`; skips,
    logged, where git cannot.

    Returns {"commit", "tag", "committed", "files"} or {"skipped": reason}. Other changes in the
    workspace, staged or not, stay out of the commit (`git commit --only -- <those files>`).
    """
    workspace = Path(workspace)
    reason = why_not_git(workspace)
    if reason:
        logger.warning(f"dvc.lock not committed, tag {tag} not made: {reason}")
        return {"skipped": reason}
    files = [LOCK_FILE_NAME, *uncached_outputs(workspace)]
    git(workspace, "add", "--", *files)
    changed = subprocess.run(["git", "diff", "--cached", "--quiet", "--", *files], cwd=workspace,
                             timeout=GIT_TIMEOUT_SECONDS, check=False).returncode != 0
    if changed:
        git(workspace, "commit", "--only", "--quiet", "-m", message, "--", *files)
    head = git(workspace, "rev-parse", "HEAD")
    existing = git(workspace, "rev-parse", "--verify", "--quiet", f"refs/tags/{tag}^{{commit}}", check=False)
    if existing and existing != head:
        reason = f"tag {tag} already names commit {existing[:12]}"
        logger.warning(f"dvc.lock committed as {head[:12]}, not tagged: {reason}")
        return {"commit": head, "committed": changed, "tag": None, "skipped": reason, "files": files}
    if not existing:
        git(workspace, "tag", "-a", tag, "-m", message.splitlines()[0])
    logger.info(f"{LOCK_FILE_NAME} {'committed as' if changed else 'already committed in'} {head[:12]}, tagged {tag}"
                + (f" (with {', '.join(files[1:])})" if files[1:] else ""))
    return {"commit": head, "committed": changed, "tag": tag, "files": files}


def push_remote(workspace: Path) -> str | None:
    """The remote to push to: the current branch's, else `origin`, else the first; None without one."""
    remotes = git(workspace, "remote").split()
    if not remotes:
        return None
    branch = git(workspace, "symbolic-ref", "--quiet", "--short", "HEAD", check=False)
    upstream = git(workspace, "config", f"branch.{branch}.remote", check=False) if branch else ""
    return next(r for r in (upstream, "origin", remotes[0]) if r in remotes)


def push_tag(workspace: Path, tag: str, logger) -> dict[str, Any]:
    """`git push <remote> <tag>`; without a remote the tag stays local (logged)."""
    remote = push_remote(Path(workspace))
    if remote is None:
        logger.info(f"no git remote in {workspace}: tag {tag} stays local")
        return {"tag": tag, "remote": None, "pushed": False}
    git(Path(workspace), "push", remote, f"refs/tags/{tag}", timeout=GIT_PUSH_TIMEOUT_SECONDS)
    logger.info(f"pushed tag {tag} to git remote {remote}")
    return {"tag": tag, "remote": remote, "pushed": True}
