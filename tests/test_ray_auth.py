"""The local Ray every CLI starts (``pipeline.runtime.ensure_ray``; the session's Ray is started by
it) keeps others out: a client without the token, dialling the node's network address, is
refused; the dashboard's jobs API answers 401 without the token and 200 with it.

Measured with ``ss -ltnp`` (Ray 2.60, ``ensure_ray``): the dashboard listens on 127.0.0.1 only;
GCS, raylet, the dashboard agent's gRPC, the metrics exporter and every worker listen on all
interfaces, the runtime-env agent and the agent's HTTP port on the node address. ``ray.init`` turns
a 127.0.0.1 node address back into the machine's own, so binding cannot close them: the token must.
"""
from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from pipeline.runtime import auth_token, ensure_ray, token_auth_on

CLIENT = """
import sys, ray
try:
    ray.init(address=sys.argv[1], log_to_driver=False)
except BaseException as e:  # refused: the class and message say why
    print("REFUSED", type(e).__name__, str(e)[:300], "CAUSE", type(e.__cause__).__name__, str(e.__cause__)[-600:].replace(chr(10), " "))
    sys.exit(3)
print("JOINED", ray.cluster_resources().get("CPU"))
ray.shutdown()
"""


def _client(address: str, home, **auth_env: str) -> subprocess.Popen:
    """A fresh Python on this machine that knows only what it is given: HOME is an empty folder
    (no ~/.ray/auth_token) and no RAY_* variable is inherited. 3 connection attempts, not 20
    (each ~1 s): a refusal is final, and the test pays for every retry."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), RAY_USAGE_STATS_ENABLED="0", RAY_NUM_REDIS_GET_RETRIES="3", **auth_env)
    return subprocess.Popen([sys.executable, "-c", CLIENT, address], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _result(proc: subprocess.Popen) -> tuple[int, str]:
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out + err[-3000:]


def _node_address(ray) -> tuple[str, int]:
    host, port = ray.get_runtime_context().gcs_address.rsplit(":", 1)
    if ipaddress.ip_address(host).is_loopback:
        pytest.skip("this machine has no network address besides loopback: nothing to dial from outside")
    return host, int(port)


def _get(url: str, token: str | None = None) -> int:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_session_ray_is_the_cli_ray_with_token_auth(ray_session):
    assert ensure_ray() is False  # already up: the CLIs would reuse it, not start another
    assert token_auth_on()
    assert os.environ["RAY_AUTH_MODE"] == "token"
    assert auth_token(), "token auth on but no token where Ray looks for it"


def test_client_without_token_on_network_address_is_refused(ray_session, tmp_path):
    host, port = _node_address(ray_session)
    address = f"{host}:{port}"
    # The GCS port answers on the network address: binding does not keep anyone out here.
    with socket.create_connection((host, port), timeout=5):
        pass
    home = tmp_path / "home"
    home.mkdir()
    # Both refused clients at once (each waits out its retries).
    plain = _client(address, home)                              # Ray's client default: no auth
    wrong = _client(address, home, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * 32)
    for proc in (plain, wrong):
        rc, log = _result(proc)
        assert rc == 3 and "REFUSED" in log and "JOINED" not in log, log
        assert "InvalidAuthToken" in log, log  # refused by the head for the token, not unreachable
    # The same client holding the token joins: the refusals above are the token's doing.
    rc, log = _result(_client(address, home, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=auth_token()))
    assert rc == 0 and "JOINED" in log, log


def test_dashboard_and_jobs_api_need_the_token(ray_session):
    from ray._private.worker import global_worker

    url = global_worker.node.address_info["webui_url"]
    host = url.split("://")[-1].rsplit(":", 1)[0]
    assert host == "127.0.0.1", f"dashboard bound to {url}"
    base = f"http://{url.split('://')[-1]}"
    assert _get(f"{base}/api/jobs/") == 401
    assert _get(f"{base}/api/jobs/", "0" * 32) in (401, 403)
    assert _get(f"{base}/api/jobs/", auth_token()) == 200
    # Nothing on the network address: the dashboard is loopback-only.
    node_host, _ = _node_address(ray_session)
    port = int(url.rsplit(":", 1)[1])
    with pytest.raises(OSError):
        socket.create_connection((node_host, port), timeout=5).close()


def test_one_ray_start_and_no_auth_off_switch_in_the_repo():
    """Every local Ray goes through ensure_ray, and nothing in the repo turns token auth off."""
    import re
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    files = [p for d in ("pipeline", "bench", "tests", "cluster", "docs", "configs", ".ci")
             for p in (repo / d).rglob("*") if p.is_file() and p.suffix in (".py", ".sh", ".yaml", ".md", "")]
    files += [repo / "README.md", repo / "Makefile"]
    off = re.compile(r"RAY_AUTH_MODE\W{0,4}(=|:|,)\s*\W?disabled|POSTER_RAY_AUTH=disabled")
    init = re.compile(r"\bray\.init\(")
    for path in files:
        if path == Path(__file__).resolve():
            continue  # this file spells the patterns
        text = path.read_text(errors="replace")
        rel = path.relative_to(repo).as_posix()
        assert not off.search(text), f"{rel} switches Ray's token auth off"
        if path.suffix == ".py" and rel != "pipeline/runtime.py":
            assert not init.search(text), f"{rel} starts Ray itself; use pipeline.runtime.ensure_ray"
