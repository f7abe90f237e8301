"""pipelines/dvc_stages.py: DVC's stage plan, what a stage's `dvc repro` said, the workspace lock, dvc.lock in git.

The flow itself (a task run per stage, the lock refusing a second run, the commit after a real
promotion) is tested end to end in test_flows.py; these are the pieces, in seconds.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from support import REPO

from core.errors import UserError
from pipelines import dvc_stages

LOGGER = "test-dvc-stages"


def run(cwd: Path, *command: str) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr + done.stdout
    return done.stdout.strip()


def dvc_init(folder: Path, *options: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    run(folder, sys.executable, "-m", "dvc", "init", "-q", *options)
    return folder


@pytest.fixture
def git_identity(monkeypatch, tmp_path):
    """No global or system git config; the identity, where a test wants one, is the repository's own."""
    empty = tmp_path / "empty.gitconfig"
    empty.write_text("")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(empty))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for key in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL", "EMAIL"):
        monkeypatch.delenv(key, raising=False)


def git_workspace(folder: Path, identity: bool = True) -> Path:
    """A git + DVC workspace with one commit (dvc.yaml, params.yaml, dvc.lock) and other work lying around."""
    folder.mkdir(parents=True, exist_ok=True)
    run(folder, "git", "init", "-q", "-b", "main")
    if identity:
        run(folder, "git", "config", "user.name", "Retrain Bot")
        run(folder, "git", "config", "user.email", "retrain@example.invalid")
    dvc_init(folder)
    for name, text in (("dvc.yaml", "stages: {}\n"), ("params.yaml", "seed: 0\n"), ("dvc.lock", "schema: '2.0'\n")):
        (folder / name).write_text(text)
    if identity:
        run(folder, "git", "add", "dvc.yaml", "params.yaml", "dvc.lock", ".dvc/config", ".dvc/.gitignore")
        run(folder, "git", "commit", "-q", "-m", "workspace")
    return folder


# --------------------------------------------------------------------------- stages


def test_the_plan_is_dvcs_own_order_of_what_the_target_depends_on(tmp_path):
    # the project's pipeline: evaluate's upstream stages, not the compare branch beside them
    project = dvc_init(tmp_path / "project", "--no-scm")
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, project / name)
    plan = dvc_stages.stage_plan(project, "evaluate")
    # the stages evaluate needs, and no other (not people, nor a compare branch), upstream first; the
    # order among independent stages is DVC's own and may change when dvc.yaml gains a stage
    assert sorted(plan) == sorted(["ingest", "detect", "objects", "cooccurrence", "embeddings", "train", "evaluate"])
    assert plan[0] == "ingest" and plan[-2:] == ["train", "evaluate"]
    # read from dvc.yaml, not a list in the code: a diamond, and a stage evaluate does not need
    diamond = dvc_init(tmp_path / "diamond", "--no-scm")
    (diamond / "dvc.yaml").write_text(textwrap.dedent("""\
        stages:
          top: {cmd: cat b c > d, deps: [b, c], outs: [d]}
          left: {cmd: cp a b, deps: [a], outs: [b]}
          right: {cmd: cp a c, deps: [a], outs: [c]}
          source: {cmd: echo > a, outs: [a]}
          aside: {cmd: echo > e, outs: [e]}
        """))
    plan = dvc_stages.stage_plan(diamond, "top")
    assert sorted(plan) == ["left", "right", "source", "top"]
    assert plan[0] == "source" and plan[-1] == "top"
    with pytest.raises(UserError, match="cannot plan `dvc repro nothing`"):
        dvc_stages.stage_plan(diamond, "nothing")


def test_the_outcome_is_what_dvc_said_first_about_the_stage():
    reader = dvc_stages.OutcomeReader("train")
    reader("Stage 'evaluate' didn't change, skipping")  # another stage's line says nothing about this one
    assert reader.outcome == dvc_stages.UNKNOWN
    reader("Running stage 'train':")
    reader("Stage 'train' didn't change, skipping")  # the stage's own output comes after DVC's line
    assert reader.outcome == dvc_stages.RAN
    for line, outcome in (("Stage 'ingest' didn't change, skipping", dvc_stages.UP_TO_DATE),
                          ("Stage 'ingest' is cached - skipping run, checking out outputs", dvc_stages.RESTORED)):
        reader = dvc_stages.OutcomeReader("ingest")
        reader(line)
        assert reader.outcome == outcome


# --------------------------------------------------------------------------- lock


def test_a_second_holder_of_the_workspace_lock_is_refused_by_name_until_the_first_lets_go(tmp_path):
    ws = dvc_init(tmp_path, "--no-scm")
    with dvc_stages.workspace_lock(ws, "retrain flow run 'first'") as path:
        assert path == ws / ".dvc/tmp/ctxemo-retrain.lock"
        assert "retrain flow run 'first' (pid" in path.read_text()
        with pytest.raises(dvc_stages.WorkspaceBusy) as busy, dvc_stages.workspace_lock(ws, "second"):
            pass
    assert f"workspace {ws} is busy: retrain flow run 'first' (pid {os.getpid()}" in str(busy.value)
    with dvc_stages.workspace_lock(ws, "retrain flow run 'third'"):  # released with its block
        pass
    # another process holding it (the kernel lock is per open file, whoever holds it)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""\
        import sys
        from pathlib import Path
        from pipelines import dvc_stages
        with dvc_stages.workspace_lock(Path({str(ws)!r}), "retrain flow run 'elsewhere'"):
            print("locked", flush=True)
            sys.stdin.readline()
        """)], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(dvc_stages.WorkspaceBusy, match=f"retrain flow run 'elsewhere' \\(pid {holder.pid} "), \
                dvc_stages.workspace_lock(ws, "retrain flow run 'here'"):
            pass
    finally:
        holder.communicate("\n", timeout=60)
    with dvc_stages.workspace_lock(ws, "retrain flow run 'here'"):
        pass
    with pytest.raises(UserError, match="not a DVC workspace"), dvc_stages.workspace_lock(tmp_path / "nowhere", "x"):
        pass


# --------------------------------------------------------------------------- git


def test_dvc_lock_alone_is_committed_and_tagged(tmp_path, git_identity, caplog):
    ws = git_workspace(tmp_path / "ws")
    (ws / "dvc.lock").write_text("schema: '2.0'\nstages: {train: {}}\n")
    (ws / "params.yaml").write_text("seed: 1\n")           # changed, not ours to commit
    (ws / "notes.txt").write_text("staged by someone\n")
    run(ws, "git", "add", "notes.txt")                     # staged, still not ours
    tag = dvc_stages.release_tag("brave-otter", "3")
    assert tag == "retrain-brave-otter-v3"
    with caplog.at_level(logging.INFO, logger=LOGGER):
        done = dvc_stages.commit_lock_file(ws, "retrain brave-otter: dvc.lock of m version 3\n\nmore", tag,
                                           logging.getLogger(LOGGER))
    assert done["committed"] and done["tag"] == tag and done["commit"] == run(ws, "git", "rev-parse", "HEAD")
    assert run(ws, "git", "show", "--name-only", "--format=%s", "HEAD").splitlines() == [
        "retrain brave-otter: dvc.lock of m version 3", "", "dvc.lock"]
    assert run(ws, "git", "rev-parse", f"{tag}^{{commit}}") == done["commit"]
    assert run(ws, "git", "status", "--porcelain").splitlines() == ["A  notes.txt", " M params.yaml"]
    assert f"tagged {tag}" in caplog.text
    # nothing new in dvc.lock: no empty commit, the tag goes on HEAD; an existing tag elsewhere is left alone
    again = dvc_stages.commit_lock_file(ws, "retrain calm-fox: ...", "retrain-calm-fox-v3", logging.getLogger(LOGGER))
    assert not again["committed"] and again["commit"] == done["commit"]
    (ws / "dvc.lock").write_text("schema: '2.0'\nstages: {train: {x: 1}}\n")
    clash = dvc_stages.commit_lock_file(ws, "retrain brave-otter: again", tag, logging.getLogger(LOGGER))
    assert clash["tag"] is None and "already names commit" in clash["skipped"]
    assert run(ws, "git", "rev-parse", f"{tag}^{{commit}}") == done["commit"]


def test_without_git_or_an_identity_recording_is_skipped_with_a_log_line(tmp_path, git_identity, caplog):
    logger = logging.getLogger(LOGGER)
    plain = dvc_init(tmp_path / "plain", "--no-scm")
    (plain / "dvc.lock").write_text("schema: '2.0'\n")
    anonymous = git_workspace(tmp_path / "anonymous", identity=False)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        skipped = dvc_stages.commit_lock_file(plain, "m", "retrain-x-v1", logger)
        assert skipped["skipped"].startswith(f"{plain} is not a git repository git can use (")
        assert "not a git repository" in skipped["skipped"].split("(", 1)[1]  # git's own message
        skipped = dvc_stages.commit_lock_file(anonymous, "m", "retrain-x-v1", logger)
        assert skipped["skipped"].startswith("git has no user identity")
    assert f"dvc.lock not committed, tag retrain-x-v1 not made: {plain} is not a git repository" in caplog.text
    assert "not made: git has no user identity" in caplog.text
    assert run(anonymous, "git", "tag") == "" and "dvc.lock" in run(anonymous, "git", "status", "--porcelain")
    # a DVC workspace set up without git inside some git repository is not committed to it either
    nested = git_workspace(tmp_path / "outer") / "inner"
    nested.mkdir()
    dvc_init(nested, "--subdir")
    run(nested, sys.executable, "-m", "dvc", "config", "core.no_scm", "true")
    (nested / "dvc.lock").write_text("schema: '2.0'\n")
    assert "core.no_scm" in dvc_stages.commit_lock_file(nested, "m", "retrain-x-v1", logger)["skipped"]


def test_the_tag_goes_to_the_remote_and_stays_local_without_one(tmp_path, git_identity, caplog):
    logger = logging.getLogger(LOGGER)
    ws = git_workspace(tmp_path / "ws")
    tag = dvc_stages.commit_lock_file(ws, "retrain r: dvc.lock of m version 1", "retrain-r-v1", logger)["tag"]
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert dvc_stages.push_tag(ws, tag, logger) == {"tag": tag, "remote": None, "pushed": False}
    assert f"no git remote in {ws}: tag retrain-r-v1 stays local" in caplog.text
    remote = tmp_path / "remote.git"
    run(tmp_path, "git", "init", "-q", "--bare", str(remote))
    run(ws, "git", "remote", "add", "backup", str(tmp_path / "nowhere.git"))
    run(ws, "git", "remote", "add", "origin", str(remote))
    assert dvc_stages.push_tag(ws, tag, logger) == {"tag": tag, "remote": "origin", "pushed": True}
    assert run(remote, "git", "rev-parse", f"{tag}^{{commit}}") == run(ws, "git", "rev-parse", "HEAD")
    with pytest.raises(dvc_stages.GitFailed, match="git push backup refs/tags/retrain-r-v1` failed"):
        run(ws, "git", "config", "branch.main.remote", "backup")  # the branch's own remote comes first
        dvc_stages.push_tag(ws, tag, logger)
