"""Storage through fsspec: any URL (``/path``, ``file://``, ``memory://``, ``s3://``...).

Rules every writer in segflow follows:

* **Nothing partial is ever published.** ``fs.open(path, "wb")`` on object stores
  uploads what was written even when an exception escapes the ``with`` block,
  so writers build the bytes first (or a local temporary file) and publish in
  one call: :func:`write_bytes` / :func:`publish_file`. Locally the publish is
  a rename, on object stores a single PUT; both are atomic per file.
* **Keys never escape the output root.** Relative names derived from data go
  through :func:`safe_join`.
* **Credentials never appear in logs.** URLs shown to users go through
  :func:`redact`.

S3-compatible endpoints come from the standard ``AWS_ENDPOINT_URL`` (or
``AWS_ENDPOINT_URL_S3``) environment variable; credentials from the usual AWS
chain (environment, profiles, instance roles).
"""

from __future__ import annotations

import errno
import functools
import json
import os
import posixpath
import re
import tempfile
import uuid
from typing import Any

import fsspec
from fsspec.core import url_to_fs as _url_to_fs

__all__ = [
    "read_json",
    "use_s3_credentials",
    "load_credentials_block",
    "open_fs",
    "join",
    "write_bytes",
    "publish_file",
    "read_bytes",
    "safe_join",
    "redact",
    "scrub",
    "secret_keys",
    "url_credential",
    "is_local",
    "create_exclusive",
]


_s3_credentials: dict[str, Any] = {}


def use_s3_credentials(credentials: dict[str, Any] | None) -> None:
    """Credentials for every ``s3://`` URL opened by this process from now on (``key``, ``secret``, ``token``).

    Set from a Prefect block by the flow (see :func:`load_credentials_block`); never logged or written.
    """
    _s3_credentials.clear()
    if credentials:
        _s3_credentials.update({k: v for k, v in credentials.items() if v})


def load_credentials_block(name: str) -> dict[str, Any]:
    """Read S3 credentials from a Prefect ``Secret`` block holding JSON.

    The block's value is ``{"aws_access_key_id": ..., "aws_secret_access_key": ...,
    "aws_session_token": ... (optional), "endpoint_url": ... (optional)}``.
    """
    import json

    from prefect.blocks.system import Secret

    try:
        value = Secret.load(name).get()  # type: ignore[union-attr]  # sync context: a Secret, not a coroutine
    except ValueError as e:
        raise ValueError(f"credentials_block: no Prefect Secret block named {name!r} ({e})") from None
    data = json.loads(value) if isinstance(value, str) else dict(value)
    missing = [k for k in ("aws_access_key_id", "aws_secret_access_key") if not data.get(k)]
    if missing:
        raise ValueError(f"credentials_block {name!r}: the secret lacks {', '.join(missing)}")
    out = {
        "key": data["aws_access_key_id"],
        "secret": data["aws_secret_access_key"],
        "token": data.get("aws_session_token"),
    }
    if data.get("endpoint_url"):
        out["endpoint_url"] = data["endpoint_url"]
    return out


def storage_options_for(url: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """fsspec options for ``url``: the S3 endpoint from the environment, block credentials, plus ``extra``."""
    opts: dict[str, Any] = dict(extra or {})
    if url.startswith(("s3://", "s3a://")):
        for k, v in _s3_credentials.items():
            opts.setdefault(k, v)
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint and "endpoint_url" not in opts and "endpoint_url" not in opts.get("client_kwargs", {}):
            opts["endpoint_url"] = endpoint
        opts.setdefault("use_listings_cache", False)  # commit records and plans must be read fresh
    return opts


def open_fs(url: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """``(filesystem, path)`` for a URL or local path."""
    return _url_to_fs(url, **storage_options_for(url, storage_options))


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,))


def join(base: str, *parts: str) -> str:
    """Join path parts with ``/`` (URLs and local paths alike)."""
    out = base.rstrip("/")
    for p in parts:
        out = f"{out}/{p.strip('/')}"
    return out


_BAD_SEGMENT = re.compile(r"(^|/)\.\.?(/|$)")


def safe_join(root: str, relative: str) -> str:
    """Join a data-derived relative key under ``root``, refusing anything that escapes it."""
    rel = relative.replace("\\", "/")
    if rel.startswith("/") or re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", rel) or _BAD_SEGMENT.search(rel) or not rel:
        raise ValueError(f"refusing key {relative!r}: it would escape the output root {redact(root)!r}")
    return join(root, posixpath.normpath(rel))


def _names_the_path(fn):
    """Object stores raise ``PermissionError`` without the key (s3fs: "Access Denied"): add it, as the OS does."""

    @functools.wraps(fn)
    def wrapper(fs: fsspec.AbstractFileSystem, path: str, *args: Any) -> Any:
        try:
            return fn(fs, path, *args)
        except PermissionError as e:
            if e.filename:
                raise
            raise PermissionError(errno.EACCES, f"permission denied ({e})", fs.unstrip_protocol(path)) from e

    return wrapper


@_names_the_path
def read_bytes(fs: fsspec.AbstractFileSystem, path: str) -> bytes:
    return fs.cat_file(path)


def read_json(fs: fsspec.AbstractFileSystem, url: str) -> Any:
    """The JSON document at ``url`` on ``fs``, or None when there is none."""
    _, path = open_fs(url)
    try:
        return json.loads(read_bytes(fs, path))
    except FileNotFoundError:
        return None


@_names_the_path
def write_bytes(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Publish ``data`` at ``path`` in one atomic step (local rename or one object PUT)."""
    parent = posixpath.dirname(path)
    if is_local(fs):
        fs.makedirs(parent, exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, data)


def publish_file(fs: fsspec.AbstractFileSystem, local_file: str, path: str) -> None:
    """Publish a finished local file at ``path`` (rename locally, one upload remotely)."""
    if is_local(fs):
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
        os.replace(local_file, path) if _same_device(local_file, path) else fs.put_file(local_file, path)
    else:
        fs.put_file(local_file, path)


def _same_device(a: str, b: str) -> bool:
    try:
        return os.stat(a).st_dev == os.stat(os.path.dirname(b) or ".").st_dev
    except OSError:
        return False


def local_tempfile(fs: fsspec.AbstractFileSystem, path: str, suffix: str = "") -> str:
    """A temporary file name next to ``path`` when local (same device, so publish is a rename)."""
    if is_local(fs):
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
        return f"{path}.tmp-{uuid.uuid4().hex}{suffix}"
    fd, name = tempfile.mkstemp(suffix=suffix, prefix="segflow-")
    os.close(fd)
    return name


@_names_the_path
def create_exclusive(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> bool:
    """Write ``path`` only if it does not exist yet. Returns False when it already existed.

    Locally this is ``O_EXCL`` on a fully written temporary file (link, so
    readers never see a partial file); on S3 a conditional PUT
    (``If-None-Match: *``); elsewhere a best-effort exists-check then write.
    """
    if is_local(fs):
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as f:
            f.write(data)
        try:
            os.link(tmp, path)  # atomic, fails if path exists
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
    try:
        with fs.open(path, "xb") as f:  # s3fs: If-None-Match: *
            f.write(data)
        return True
    except FileExistsError:
        return False
    except (NotImplementedError, ValueError):
        if fs.exists(path):
            return False
        fs.pipe_file(path, data)
        return True


_CRED_IN_URL = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")
_CRED_IN_QUERY = re.compile(
    r"(?i)([?&](?:x-amz-credential|x-amz-signature|x-amz-security-token|x-goog-signature|x-goog-credential|"
    r"signature|sig|token|key|access_token|api_key|apikey|password)=)[^&\s\"']+"
)
_CRED_IN_TEXT = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]{16,}")
#: keys whose values are credentials, at any depth of a mapping (storage options, headers, client settings)
SECRET_KEY = re.compile(
    r"(?i)(secret|passw|token|credential(?!s_block$)|authori[sz]ation|signature(?!_version)|api[_-]?key|private[_-]?key|^key$|"
    r"access[_-]?key|session[_-]?token|cookie|bearer|^sas$|connection[_-]?string)"
)


def redact(url: str) -> str:
    """Remove credentials from a URL (or any text holding URLs) before it is shown, logged or written:
    userinfo (``user:password@``), signature and token query parameters, ``Bearer`` tokens."""
    url = _CRED_IN_URL.sub(r"\g<scheme>***@", str(url))
    url = _CRED_IN_QUERY.sub(r"\1***", url)
    return _CRED_IN_TEXT.sub(r"\1 ***", url)


def url_credential(url: str) -> str | None:
    """What kind of credential a URL carries (``user:password@`` or a signature/token parameter), or None."""
    if _CRED_IN_URL.search(url):
        return "a user name and password (user:password@)"
    if _CRED_IN_QUERY.search(url):
        return "a signature or token parameter (a presigned URL)"
    return None


def secret_keys(obj: Any, path: str = "") -> list[str]:
    """Key paths (``a.b.c``) of the secret-looking keys at any depth of nested mappings and lists."""
    found: list[str] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            key = f"{path}.{k}" if path else str(k)
            if SECRET_KEY.search(str(k)):
                found.append(key)
            else:
                found += secret_keys(v, key)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            found += secret_keys(v, f"{path}[{i}]")
    return found


def scrub(obj: Any) -> Any:
    """A copy of a JSON-like value with every secret-looking key's value replaced by ``***`` and every string
    passed through :func:`redact`: what is written or shown of a job, a summary or a record, whatever it holds."""
    if isinstance(obj, dict):
        return {k: "***" if SECRET_KEY.search(str(k)) and v not in (None, "") else scrub(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [scrub(v) for v in obj]
    if isinstance(obj, str):
        return redact(obj)
    return obj
