"""A real S3 API on 127.0.0.1 for tests: moto's standalone server (``moto_server``), started in a
session of its own and stopped by the PID it started, never by name.

``auth=True`` turns moto's IAM checks on (``INITIAL_NO_AUTH_ACTION_COUNT``: the first three calls
create a user, its policy and its key; every later call must be signed by that key), so wrong keys
are refused as by AWS. Without it any key is accepted.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ALLOW_ALL = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    def __init__(self, port: int | None = None, *, auth: bool = False, log: Path | None = None):
        self.port = port or free_port()
        self.auth = auth
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.keys = {"AWS_ACCESS_KEY_ID": "poster-test", "AWS_SECRET_ACCESS_KEY": "poster-test-secret"}

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The four documented variables a client needs, and nothing else."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": "us-east-1", **self.keys}

    def start(self, timeout_s: float = 30.0) -> "S3Server":
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        if self.auth:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = "3"
        server = str(Path(sys.executable).parent / "moto_server")
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL
        self.proc = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(self.port)], env=env,
                                     stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto_server did not start on {self.endpoint}")
                time.sleep(0.1)
        if self.auth:
            self._create_key()
        return self

    def _create_key(self) -> None:
        import boto3

        iam = boto3.client("iam", endpoint_url=self.endpoint, region_name="us-east-1",
                           aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
        iam.create_user(UserName="poster")
        iam.put_user_policy(UserName="poster", PolicyName="all", PolicyDocument=ALLOW_ALL)
        key = iam.create_access_key(UserName="poster")["AccessKey"]
        self.keys = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}

    def client(self):
        import boto3

        e = self.env()
        return boto3.client("s3", endpoint_url=e["AWS_ENDPOINT_URL"], region_name=e["AWS_REGION"],
                            aws_access_key_id=e["AWS_ACCESS_KEY_ID"], aws_secret_access_key=e["AWS_SECRET_ACCESS_KEY"])

    def bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}"

    def keys_under(self, uri: str) -> list[str]:
        bucket, _, prefix = uri[len("s3://"):].partition("/")
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: the server and nothing else
            self.proc.wait(timeout=10)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None
