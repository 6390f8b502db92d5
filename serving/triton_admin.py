"""Triton's admin key: model control and the other non-inference protocols answer only to callers that send it.

The server restricts them with Triton's restricted-protocol options (gRPC and HTTP); health, metadata and
inference stay open (the API needs nothing else). The key comes from RECSYS_TRITON_ADMIN_KEY when set (the
cluster sets it from the Secret `recsys-triton-admin`), else from `<triton_build_dir>/triton_admin.key`, a 0600
file the local launcher generates at its first start and every local caller (deploy, rollback, status, the
smoke test) reads. Triton takes the key on its command line: it is visible in the process list of its host
or pod. Nothing here logs or prints the key.
"""

import os
import re
import secrets
from pathlib import Path

from components.errors import RecsysError

ADMIN_KEY_ENV = "RECSYS_TRITON_ADMIN_KEY"
ADMIN_KEY_SECRET = "recsys-triton-admin"  # the cluster's Secret (key `key`), k8s/base/triton.yaml
ADMIN_KEY_FILE = "triton_admin.key"
HEADER = "admin-key"  # the HTTP header; gRPC clients send it as metadata with Triton's prefix (GRPC_HEADER)
GRPC_HEADER = f"triton-grpc-protocol-{HEADER}"
RESTRICTED_PROTOCOLS = ("model-repository", "model-config", "shared-memory", "statistics", "trace", "logging")
KEY_RE = re.compile(r"[A-Za-z0-9._~-]{16,256}")  # no ':', ',' or '=': the option's own separators


class AdminKeyError(RecsysError):
    """The Triton admin key is missing, malformed or stored unsafely."""


def key_file(build_dir: str | Path) -> Path:
    return Path(build_dir) / ADMIN_KEY_FILE


def _checked(key: str, where: str) -> str:
    if not KEY_RE.fullmatch(key):
        raise AdminKeyError(f"the Triton admin key in {where} must be 16-256 characters of A-Z a-z 0-9 . _ ~ - "
                            "(e.g. `openssl rand -hex 32`)")
    return key


def _read(path: Path) -> str:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise AdminKeyError(f"{path} is readable by other users (mode {mode:o}): `chmod 600 {path}`")
    return _checked(path.read_text(encoding="utf-8").strip(), str(path))


def admin_key(build_dir: str | Path, create: bool = False) -> str | None:
    """The key: $RECSYS_TRITON_ADMIN_KEY, else the key file of `build_dir` (generated there when `create`,
    as the launcher does); None when neither exists."""
    value = os.environ.get(ADMIN_KEY_ENV, "").strip()
    if value:
        return _checked(value, f"${ADMIN_KEY_ENV}")
    path = key_file(build_dir)
    if path.is_file():
        return _read(path)
    if not create:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another launcher won the race: use its key
        return _read(path)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(secrets.token_hex(32) + "\n")
        out.flush()
        os.fsync(out.fileno())
    return _read(path)


def server_options(key: str) -> list[str]:
    """tritonserver options that restrict every protocol except health, metadata and inference to `key`."""
    rule = f"{','.join(RESTRICTED_PROTOCOLS)}:{HEADER}={_checked(key, 'the server options')}"
    return [f"--grpc-restricted-protocol={rule}", f"--http-restricted-api={rule}"]


def redact(args: list[str]) -> list[str]:
    """A command line fit for a log: the key of the restricted-protocol options replaced by ***."""
    return [re.sub(rf"^(--(?:grpc-restricted-protocol|http-restricted-api)=[^:]*:{HEADER}=).*", r"\1***", a)
            for a in args]


def grpc_headers(key: str | None) -> dict[str, str] | None:
    """The gRPC metadata of an admin call (tritonclient's `headers=`)."""
    return {GRPC_HEADER: key} if key else None


def is_refusal(message: str) -> bool:
    """Whether a Triton error says a restricted protocol was called without the right key."""
    return "protocol is restricted" in message or "API is restricted" in message
