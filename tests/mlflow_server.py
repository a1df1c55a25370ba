"""A real MLflow tracking server on 127.0.0.1 (sqlite backend) that a test starts, stops and
restarts by the PID it started (the server's own process group), never by name."""
from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """``auth=True`` runs MLflow's basic-auth app (every request needs a user; per-model
    permissions): the admin's password goes to the server in its environment, never in argv, and
    ``admin_env`` gives it to a client the same way (MLFLOW_TRACKING_USERNAME/PASSWORD)."""

    def __init__(self, root: Path, port: int | None = None, auth: bool = False):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.auth = auth
        self.admin_password = secrets.token_urlsafe(16)
        self.secret_key = secrets.token_urlsafe(32)

    @property
    def admin_env(self) -> dict[str, str]:
        return {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": self.admin_password}

    def _auth_args(self) -> tuple[list[str], dict[str, str]]:
        if not self.auth:
            return [], {}
        ini = self.root / "basic_auth.ini"
        ini.write_text("[mlflow]\ndefault_permission = READ\n"
                       f"database_uri = sqlite:///{self.root / 'basic_auth.db'}\n"
                       "admin_username = admin\n"
                       "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                       # without it every request re-hashes the password (PBKDF2): seconds per
                       # model log on 2 busy cores
                       "auth_cache_ttl_seconds = 300\n")
        return ["--app-name", "basic-auth"], {"MLFLOW_AUTH_CONFIG_PATH": str(ini),
                                              "MLFLOW_AUTH_ADMIN_PASSWORD": self.admin_password,
                                              # the app's CSRF key; one per server, kept across restarts
                                              "MLFLOW_FLASK_SERVER_SECRET_KEY": self.secret_key}

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 180.0) -> "MlflowServer":
        mlflow_bin = str(Path(sys.executable).parent / "mlflow")
        auth_args, auth_env = self._auth_args()
        self.proc = subprocess.Popen(
            [mlflow_bin, "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts"), *auth_args],
            env={**os.environ, **auth_env},
            stdout=open(self.root / "server.log", "ab"), stderr=subprocess.STDOUT,
            start_new_session=True)  # own process group: stop() ends the server and its workers only
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.root / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server on {self.uri} not healthy after {timeout_s} s")

    def stop(self, crash: bool = False) -> None:
        """SIGTERM (or SIGKILL with ``crash``, an outage without warning) to the server's group."""
        if self.proc is None:
            return
        with_pgid = self.proc.pid  # start_new_session: the group id is the PID we started
        try:
            os.killpg(with_pgid, signal.SIGKILL if crash else signal.SIGTERM)
            self.proc.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(with_pgid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None
