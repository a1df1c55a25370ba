"""Paths and object-storage URIs, one set of rules for every command that takes a location.

A location is a local path or a URI (``s3://bucket/prefix``, ``file:///x``). S3 is configured only
through the standard AWS variables, read by pyarrow, boto3 and MLflow alike:

    AWS_ENDPOINT_URL        http://127.0.0.1:9000 for a local S3 API (moto, MinIO); unset = AWS
    AWS_ACCESS_KEY_ID       the keys (or an instance profile / ~/.aws when unset)
    AWS_SECRET_ACCESS_KEY
    AWS_REGION              us-east-1 when unset

Keys never go in a URI (``s3://KEY:SECRET@bucket``, ``?secret_key=``): a URI is printed, logged as
an MLflow param and stored in manifests and checkpoints, so such a URI is refused.

``pyarrow.fs.FileSystem.from_uri`` returns paths without the scheme (``bucket/x``); ``uri_of``
puts the user's scheme back wherever a path is printed, stored or handed to another command.
"""
from __future__ import annotations

import os
from typing import Any
from urllib.parse import parse_qsl, urlsplit

AWS_VARS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")
# pyarrow's S3 URI options that carry credentials
SECRET_OPTIONS = {"access_key", "secret_key", "session_token", "role_arn", "external_id"}
PREFLIGHT_TIMEOUT_S = 5.0


class StorageError(ValueError):
    """A location that cannot be used, said in one line with the fix."""


def is_uri(location: str) -> bool:
    return "://" in str(location)


def scheme(location: str) -> str:
    return str(location).split("://", 1)[0].lower() if is_uri(location) else ""


def check_uri(location: str, what: str = "location") -> None:
    """Refuse credentials inside a URI (they would be printed, logged and stored with it)."""
    if not is_uri(location):
        return
    parts = urlsplit(str(location))
    keys = {k.lower() for k, _ in parse_qsl(parts.query)}
    if "@" in parts.netloc or keys & SECRET_OPTIONS:
        raise StorageError(f"{what}={redact(location)}: credentials in the URI are refused (it is "
                           "printed and logged); set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY instead")


def redact(location: str) -> str:
    """The URI without user info and query string (what may appear in a message)."""
    if not is_uri(location):
        return str(location)
    parts = urlsplit(str(location))
    host = parts.netloc.rsplit("@", 1)[-1]
    return f"{parts.scheme}://{host}{parts.path}"


def join(base: str, *parts: str) -> str:
    """``base/part/...`` for a path or URI (``s3://b`` + ``x`` = ``s3://b/x``)."""
    return "/".join([str(base).rstrip("/"), *(str(p).strip("/") for p in parts if str(p).strip("/"))])


def filesystem(location: str) -> tuple[Any, str]:
    """(pyarrow FileSystem, path inside it) for a local path or URI. S3 honours AWS_ENDPOINT_URL."""
    from pyarrow import fs as pafs

    location = str(location)
    if not is_uri(location):
        return pafs.LocalFileSystem(), os.path.abspath(location)
    check_uri(location)
    return pafs.FileSystem.from_uri(location)


def uri_of(path: str, like: str) -> str:
    """``path`` as a pyarrow filesystem gave it (``bucket/x``), with ``like``'s scheme put back."""
    path = str(path)
    if not is_uri(like) or is_uri(path) or scheme(like) == "file":
        return path
    return f"{scheme(like)}://{path.lstrip('/')}"


def checkpoint_uri(checkpoint: Any, storage_path: str) -> str:
    """A Ray Train checkpoint's location in the user's terms (``s3://...`` kept)."""
    return uri_of(checkpoint.path, storage_path)


def _bucket(location: str) -> tuple[str, str]:
    parts = urlsplit(str(location))
    return parts.netloc.rsplit("@", 1)[-1], parts.path.strip("/")


def _probe_fs() -> Any:
    """An S3 filesystem that answers or fails within seconds (the default retries for minutes)."""
    from pyarrow import fs as pafs

    return pafs.S3FileSystem(endpoint_override=os.environ.get("AWS_ENDPOINT_URL") or None,
                             region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None,
                             connect_timeout=PREFLIGHT_TIMEOUT_S, request_timeout=PREFLIGHT_TIMEOUT_S,
                             retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1))


def _explain(err: Exception, location: str, what: str) -> str:
    """An S3 SDK error as one line naming the setting to fix."""
    text = str(err)
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or "AWS's default endpoint"
    head = f"{what}={redact(location)}"
    if "NETWORK_CONNECTION" in text or "curlCode" in text:
        return f"{head}: cannot reach the S3 endpoint {endpoint}; check AWS_ENDPOINT_URL and that the server runs"
    if any(k in text for k in ("ACCESS_DENIED", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403")):
        return (f"{head}: access denied by {endpoint}; check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
                "and the bucket's permissions")
    first = text.splitlines()[0] if text else type(err).__name__
    return f"{head}: {first}"


def preflight(location: str, what: str, *, must_exist: bool = False) -> None:
    """Check a location before any Ray work: one StorageError line for a wrong endpoint, bad keys,
    a missing bucket or (``must_exist``) a missing object/prefix. Local paths are left to the
    commands' own checks (they name the missing manifest or folder)."""
    location = str(location)
    if not is_uri(location):
        return
    check_uri(location, what)
    if scheme(location) not in ("s3", "s3a"):
        return  # other schemes (gs://, file://) are left to pyarrow's own errors
    bucket, key = _bucket(location)
    fs = _probe_fs()
    try:
        info = fs.get_file_info(bucket)
        found = fs.get_file_info(f"{bucket}/{key}") if key and must_exist else None
    except OSError as e:
        raise StorageError(_explain(e, location, what)) from None
    from pyarrow import fs as pafs

    if info.type == pafs.FileType.NotFound:
        endpoint = os.environ.get("AWS_ENDPOINT_URL") or "AWS"
        raise StorageError(f"{what}={redact(location)}: bucket '{bucket}' does not exist at {endpoint}; "
                           "create it or fix the URI")
    if found is not None and found.type == pafs.FileType.NotFound:
        raise StorageError(f"{what}={redact(location)}: nothing at that key in bucket '{bucket}'")


def list_files(location: str) -> list[str]:
    """Every file under a folder or prefix, recursively and sorted, as paths/URIs like ``location``."""
    from pyarrow import fs as pafs

    fs, root = filesystem(location)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    return sorted(uri_of(i.path, location) for i in infos if i.type == pafs.FileType.File)


def read_bytes(location: str) -> bytes:
    fs, path = filesystem(location)
    with fs.open_input_stream(path) as f:
        return f.read()


def secrets_in_env() -> list[str]:
    """The values that must never appear in argv, logs, params, tags, manifests or checkpoints."""
    return [v for k in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN") if (v := os.environ.get(k, ""))]
