"""The embedded Ray cluster serves this machine only: every socket it listens on is loopback (#18, item 2)."""
from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import textwrap

from support import REPO

# In a fresh process (the session's own Ray may already be up): start the embedded cluster the
# way every stage does, with the dashboard on, run a task and an actor so that workers exist,
# then list what the driver and every process it started listen on.
PROBE = textwrap.dedent("""
    import json, os, psutil, ray
    from core.ray_utils import init_ray

    init_ray(num_cpus=1, include_dashboard=True, object_store_memory=100 * 1024**2)

    @ray.remote
    def task():
        return os.getpid()

    @ray.remote
    class Actor:
        def pid(self):
            return os.getpid()

    actor = Actor.remote()
    ray.get([task.remote(), actor.pid.remote()])
    me = psutil.Process()
    listening = []
    for proc in [me, *me.children(recursive=True)]:
        try:
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    listening.append([proc.name(), conn.laddr.ip, conn.laddr.port])
        except psutil.NoSuchProcess:
            pass
    print(json.dumps({"node": ray.nodes()[0]["NodeManagerAddress"], "listening": listening}))
    ray.shutdown()
""")


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def test_the_embedded_cluster_listens_on_loopback_only(tmp_path):
    environment = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=environment, capture_output=True,
                            text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["node"] == "127.0.0.1"
    names = {name for name, _, _ in report["listening"]}
    # the GCS, the raylet, the agents and the workers were all seen listening
    assert {"gcs_server", "raylet"} <= names and any(n.startswith("ray::") for n in names), names
    exposed = [entry for entry in report["listening"] if not _loopback(entry[1])]
    assert exposed == [], exposed


def test_loopback_ip_check():
    assert _loopback("127.0.0.1") and _loopback("::ffff:127.0.0.1") and _loopback("::1")
    assert not _loopback("0.0.0.0") and not _loopback("::") and not _loopback("192.0.2.2")
