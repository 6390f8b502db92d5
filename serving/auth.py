"""Who is calling the API and what they may do: bearer API keys (stored as hashes) and OIDC JWTs, with scopes.

- API keys look like `rsk_<key id>_<secret>`; the keys file (JSON) holds each key's id, name, scopes, creation time
  and the SHA-256 of the token, never the token. The file is re-read when it changes (a stat per request), so keys
  are added, rotated and revoked without a restart.
- JWTs are verified against the configured JWKS (cached), issuer, audience and asymmetric algorithms; scopes come
  from the `scope` (space-separated) or `scp` claim.
- Scopes: `recommend` (POST /recommend), `interactions:write` (POST /interactions), `history:read` (a user's recent
  items in answers), `admin` (everything, /metrics included). Health probes and the OpenAPI document are open.
- `BearerAuth` is the pure-ASGI middleware: 401 (missing/invalid credentials) or 403 (scope missing), each with a
  JSON body and a `WWW-Authenticate` header that say which; otherwise the caller rides along in the ASGI scope.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.responses import JSONResponse

from components.config import ASYMMETRIC_JWT_ALGORITHMS
from components.errors import RecsysError

log = logging.getLogger("recsys.api.auth")

RECOMMEND, INTERACTIONS_WRITE, HISTORY_READ, ADMIN = "recommend", "interactions:write", "history:read", "admin"
SCOPES = (RECOMMEND, INTERACTIONS_WRITE, HISTORY_READ, ADMIN)
ROUTE_SCOPES = {"/recommend": RECOMMEND, "/interactions": INTERACTIONS_WRITE}  # any other route needs admin
OPEN_PATHS = frozenset({"/", "/docs", "/docs.json", "/schema.json", "/healthz", "/livez", "/readyz"})
OPEN_PREFIXES = ("/static_content/",)  # the Swagger UI's assets
KEY_PREFIX = "rsk"
CALLER = "recsys.caller"  # ASGI scope key under which BearerAuth leaves the Caller
REALM = "recsys"
JWKS_MIN_REFRESH_S = 30.0  # an unknown `kid` re-fetches the JWKS at most this often (no fetch per forged token)


class AuthError(RecsysError):
    """A refused request: 401 (who is calling is unknown) or 403 (the caller lacks the scope)."""

    def __init__(self, status: int, reason: str, message: str, scope: str | None = None) -> None:
        super().__init__(message)
        self.status, self.reason, self.message, self.scope = status, reason, message, scope

    def response(self) -> JSONResponse:
        if self.status == 403:
            challenge = f'Bearer realm="{REALM}", error="insufficient_scope", scope="{self.scope}"'
            body = {"error": self.message, "reason": self.reason, "required_scope": self.scope}
        elif self.reason == "missing_header":  # RFC 6750: no error code when no credentials were sent
            challenge, body = f'Bearer realm="{REALM}"', {"error": self.message, "reason": self.reason}
        else:
            challenge = f'Bearer realm="{REALM}", error="invalid_token", error_description="{self.reason}"'
            body = {"error": self.message, "reason": self.reason}
        return JSONResponse(body, status_code=self.status, headers={"WWW-Authenticate": challenge})


def unauthenticated(reason: str, message: str) -> AuthError:
    return AuthError(401, reason, message)


class KeyFileError(RecsysError):
    """The keys file cannot be read or changed; the message names the file and the problem."""


# ------------------------------------------------------------------------------------------------ callers
@dataclass(frozen=True)
class Caller:
    """An authenticated caller: an API key (name = key id) or a JWT (subject = `sub`), and its scopes."""

    kind: str  # "api_key", "jwt", or "open" (authentication disabled)
    name: str
    scopes: frozenset[str]
    subject: str | None = None

    def allows(self, scope: str) -> bool:
        return ADMIN in self.scopes or scope in self.scopes


UNRESTRICTED = Caller("open", "authentication disabled", frozenset(SCOPES))


def may_read_history(caller: Caller | None, user_id: Any) -> bool:
    """Whether answers about `user_id` may name the user's recent items (explanations, closest and recent item
    ids): admin and history:read holders, and a JWT whose subject is that user."""
    if caller is None:
        return False
    if caller.allows(HISTORY_READ):
        return True
    return caller.kind == "jwt" and caller.subject is not None and caller.subject == str(user_id)


def required_scope(path: str) -> str | None:
    """The scope a route needs; None for the open ones (health probes, OpenAPI document)."""
    if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
        return None
    return ROUTE_SCOPES.get(path, ADMIN)


def check_scopes(scopes: list[str] | tuple[str, ...]) -> list[str]:
    """The scopes, validated: known names, at least one, no duplicates (order kept)."""
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise KeyFileError(f"unknown scope {unknown[0]!r}: choose from {', '.join(SCOPES)}")
    if not scopes:
        raise KeyFileError(f"a key needs at least one scope: {', '.join(SCOPES)}")
    return list(dict.fromkeys(scopes))


# ------------------------------------------------------------------------------------------------ API keys
@dataclass(frozen=True)
class KeyRecord:
    """One API key as the keys file stores it: the hash of the token, never the token."""

    id: str
    name: str
    scopes: tuple[str, ...]
    created: str
    sha256: str

    def public(self) -> dict[str, Any]:
        """What may be shown (CLI listing): everything but the hash."""
        return {"id": self.id, "name": self.name, "scopes": list(self.scopes), "created": self.created}


def token_hash(token: str) -> str:
    """SHA-256 of a token (keys are 256-bit random: no slow hash needed)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def key_id_of(token: str) -> str | None:
    """The key id inside an `rsk_<id>_<secret>` token, None when the token does not have that shape."""
    prefix, _, rest = token.partition("_")
    key_id, _, secret = rest.partition("_")
    return key_id if prefix == KEY_PREFIX and key_id and secret else None


def read_keys(path: str | Path) -> dict[str, KeyRecord]:
    """The keys of a keys file by id; KeyFileError names the file and what is wrong."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        records = [KeyRecord(id=str(k["id"]), name=str(k["name"]), scopes=tuple(check_scopes(list(k["scopes"]))),
                             created=str(k["created"]), sha256=str(k["sha256"])) for k in data["keys"]]
    except FileNotFoundError as err:
        raise KeyFileError(f"no API keys file at {path}") from err
    except (OSError, ValueError, KeyError, TypeError, KeyFileError) as err:
        raise KeyFileError(f"API keys file {path} is not usable: {err}") from err
    return {r.id: r for r in records}


def _write_keys(path: Path, keys: dict[str, KeyRecord]) -> None:
    """Replace the keys file atomically (temp file, fsync, rename), readable by its owner only."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    payload = {"version": 1, "keys": [asdict(r) | {"scopes": list(r.scopes)} for r in keys.values()]}
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[dict[str, KeyRecord]]:
    """The keys of `path` (empty when it does not exist yet) under an exclusive lock; written back on exit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        keys = read_keys(path) if path.exists() else {}
        yield keys
        _write_keys(path, keys)


def create_key(path: str | Path, name: str, scopes: list[str] | tuple[str, ...]) -> tuple[KeyRecord, str]:
    """Add a key to the keys file; returns its record and the token (shown once, stored nowhere)."""
    name = name.strip()
    if not name or len(name) > 64 or not name.isprintable():
        raise KeyFileError(f"key name must be 1-64 printable characters, got {name!r}")
    scopes = check_scopes(list(scopes))
    with _locked(Path(path)) as keys:
        key_id = secrets.token_hex(6)
        while key_id in keys:
            key_id = secrets.token_hex(6)
        token = f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
        record = KeyRecord(key_id, name, tuple(scopes), datetime.now(UTC).isoformat(timespec="seconds"),
                           token_hash(token))
        keys[key_id] = record
    return record, token


def revoke_key(path: str | Path, key_id: str) -> KeyRecord:
    """Remove a key from the keys file (the API refuses it from its next request on); returns its record."""
    with _locked(Path(path)) as keys:
        if key_id not in keys:
            raise KeyFileError(f"no key with id {key_id!r} in {path} (see `recsys serve api-key list`)")
        return keys.pop(key_id)


def write_token_file(path: str | Path, token: str) -> Path:
    """Write a token to a new file readable by its owner only (refuses to overwrite one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(token + "\n")
    return path


class KeyStore:
    """The keys file as the API sees it: re-read whenever its identity, size or mtime changes (one stat per
    check), so rotation and revocation take effect at the next request. A missing or broken file keeps the
    last good keys (none at first) and is reported once per change."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._keys: dict[str, KeyRecord] = {}
        self._seen: tuple[int, int, int] | None = None
        self._lock = threading.Lock()

    def _refresh(self) -> None:
        try:
            st = os.stat(self.path)
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            stamp = (0, 0, 0)
        if stamp == self._seen:
            return
        with self._lock:
            if stamp == self._seen:
                return
            try:
                self._keys = read_keys(self.path)
                log.info("API keys loaded from %s: %d key(s)", self.path, len(self._keys))
            except KeyFileError as err:
                log.error("%s; keeping the %d key(s) loaded before", err, len(self._keys))
            self._seen = stamp

    def verify(self, token: str) -> Caller:
        """The caller an API key token stands for, or a 401 AuthError saying why not."""
        key_id = key_id_of(token)
        if key_id is None:
            raise unauthenticated("malformed_key", f"an API key looks like {KEY_PREFIX}_<key id>_<secret>")
        self._refresh()
        record = self._keys.get(key_id)
        # compare against a dummy hash for unknown ids too: the time taken does not tell which ids exist
        expected = record.sha256 if record is not None else "0" * 64
        if not hmac.compare_digest(token_hash(token), expected) or record is None:
            raise unauthenticated("unknown_key", f"unknown or revoked API key (key id {key_id!r})")
        return Caller("api_key", record.id, frozenset(record.scopes))


# ------------------------------------------------------------------------------------------------ JWTs
class JwtVerifier:
    """OIDC access tokens: signature by a key of the JWKS (fetched and cached), issuer, audience, expiry."""

    def __init__(self, jwks_url: str, issuer: str, audience: str, algorithms: list[str], leeway_s: float = 30.0,
                 jwks_cache_s: float = 300.0, timeout_s: float = 5.0) -> None:
        import jwt

        bad = [a for a in algorithms if a not in ASYMMETRIC_JWT_ALGORITHMS]
        if bad or not algorithms:
            raise ValueError(f"JWT algorithms must be asymmetric ({', '.join(ASYMMETRIC_JWT_ALGORITHMS)}), "
                             f"got {bad or algorithms}")
        self.issuer, self.audience, self.algorithms, self.leeway_s = issuer, audience, list(algorithms), leeway_s
        self._jwks = jwt.PyJWKClient(jwks_url, cache_keys=True, lifespan=jwks_cache_s, timeout=timeout_s)
        self._refreshed = 0.0
        self._lock = threading.Lock()

    def _signing_key(self, kid: str | None) -> Any:
        import jwt

        try:
            keys = self._jwks.get_signing_keys()
            found = next((k for k in keys if k.key_id == kid), None)
            with self._lock:
                stale = time.monotonic() - self._refreshed > JWKS_MIN_REFRESH_S
                if found is None and stale:  # a rotated signing key: fetch the JWKS again (rate-limited)
                    self._refreshed = time.monotonic()
                    keys = self._jwks.get_signing_keys(refresh=True)
                    found = next((k for k in keys if k.key_id == kid), None)
        except jwt.PyJWKClientConnectionError as err:
            raise unauthenticated("jwks_unavailable", f"the JWKS could not be fetched to verify the token: {err}") \
                from err
        except jwt.PyJWKClientError as err:
            raise unauthenticated("unknown_signing_key", f"no usable signing key in the JWKS: {err}") from err
        if found is None:
            raise unauthenticated("unknown_signing_key", f"no key with kid {kid!r} in the JWKS")
        return found

    def verify(self, token: str) -> Caller:
        """The caller a JWT stands for, or a 401 AuthError saying what is wrong with the token."""
        import jwt

        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError as err:
            raise unauthenticated("malformed_token", f"the bearer token is not a JWT: {err}") from err
        alg = header.get("alg")
        if alg not in self.algorithms:
            raise unauthenticated("algorithm_not_allowed",
                                  f"JWT algorithm {alg!r} is not allowed (allowed: {', '.join(self.algorithms)})")
        key = self._signing_key(header.get("kid"))
        if key.algorithm_name != alg:
            raise unauthenticated("algorithm_not_allowed", f"JWT algorithm {alg!r} does not match its key's")
        try:
            claims = jwt.decode(token, key=key.key, algorithms=[alg], audience=self.audience, issuer=self.issuer,
                                leeway=self.leeway_s, options={"require": ["exp", "iss", "aud", "sub"]})
        except jwt.ExpiredSignatureError as err:
            raise unauthenticated("expired_token", "the token has expired") from err
        except jwt.InvalidAudienceError as err:
            raise unauthenticated("wrong_audience", f"the token is not for audience {self.audience!r}") from err
        except jwt.InvalidIssuerError as err:
            raise unauthenticated("wrong_issuer", f"the token was not issued by {self.issuer!r}") from err
        except jwt.InvalidSignatureError as err:
            raise unauthenticated("bad_signature", "the token's signature does not verify") from err
        except jwt.MissingRequiredClaimError as err:
            raise unauthenticated("missing_claim", f"the token lacks the {err.claim!r} claim") from err
        except jwt.ImmatureSignatureError as err:
            raise unauthenticated("token_not_yet_valid", f"the token is not valid yet: {err}") from err
        except jwt.InvalidTokenError as err:
            raise unauthenticated("invalid_token", f"the token is not valid: {err}") from err
        raw = claims.get("scope", claims.get("scp", []))
        scopes = raw.split() if isinstance(raw, str) else [str(s) for s in raw] if isinstance(raw, list) else []
        return Caller("jwt", str(claims["sub"]), frozenset(s for s in scopes if s in SCOPES), str(claims["sub"]))


# ------------------------------------------------------------------------------------------------ both
class Authenticator:
    """Turns an Authorization header into a Caller: API keys from the keys file, JWTs when a JWKS is configured."""

    def __init__(self, keys: KeyStore, jwt_verifier: JwtVerifier | None = None, enabled: bool = True) -> None:
        self.keys, self.jwt, self.enabled = keys, jwt_verifier, enabled

    @classmethod
    def from_config(cls, config: Any) -> Authenticator:
        """From `serving.auth` of a Config (its api_keys_file must be set: `recsys serve api` sets it)."""
        auth = config.serving.auth
        if auth.api_keys_file is None:
            raise KeyFileError("serving.auth.api_keys_file is not set (`recsys serve api` fills in its default)")
        jwt_cfg = auth.jwt
        verifier = None
        if jwt_cfg.jwks_url:
            verifier = JwtVerifier(jwt_cfg.jwks_url, jwt_cfg.issuer, jwt_cfg.audience, jwt_cfg.algorithms,
                                   jwt_cfg.leeway_s, jwt_cfg.jwks_cache_s)
        return cls(KeyStore(auth.api_keys_file), verifier, auth.enabled)

    def authenticate(self, authorization: list[bytes]) -> Caller:
        """The caller named by the Authorization header values of a request; a 401 AuthError otherwise."""
        if not self.enabled:
            return UNRESTRICTED
        if not authorization:
            raise unauthenticated("missing_header", "missing Authorization header: send 'Authorization: Bearer "
                                                    "<API key or JWT>'")
        if len(authorization) > 1:
            raise unauthenticated("malformed_header", "more than one Authorization header")
        scheme, _, token = authorization[0].decode("latin-1").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or " " in token:
            raise unauthenticated("malformed_header", "malformed Authorization header: expected 'Bearer <token>'")
        if token.startswith(f"{KEY_PREFIX}_"):
            return self.keys.verify(token)
        if self.jwt is None:
            raise unauthenticated("unknown_key", "the token is not an API key and JWTs are not accepted here "
                                                 "(serving.auth.jwt.jwks_url is not set)")
        return self.jwt.verify(token)

    @staticmethod
    def authorize(caller: Caller, scope: str) -> None:
        """A 403 AuthError naming the scope when the caller lacks it."""
        if not caller.allows(scope):
            raise AuthError(403, "insufficient_scope", f"this route needs the {scope!r} scope; the caller "
                                                       f"({caller.kind} {caller.name}) holds "
                                                       f"{', '.join(sorted(caller.scopes)) or 'none'}", scope)


class BearerAuth:
    """ASGI middleware: every HTTP route but the open ones needs a bearer token with the route's scope; the
    authenticated Caller is left in the ASGI scope under CALLER for the handlers."""

    def __init__(self, app: Any, authenticator: Authenticator | None = None) -> None:
        self.app = app
        if authenticator is None:
            from components.config import load_config

            authenticator = Authenticator.from_config(load_config())
        self.auth = authenticator
        if not authenticator.enabled:
            log.warning("authentication is disabled (serving.auth.enabled=false): every caller may do everything")

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        needed = required_scope(scope.get("path", ""))
        if needed is None:
            await self.app(scope, receive, send)
            return
        header = [value for name, value in scope.get("headers") or [] if name == b"authorization"]
        try:
            if header and not header[0].lstrip().lower().startswith(f"bearer {KEY_PREFIX}_".encode()) \
                    and self.auth.jwt is not None:
                from starlette.concurrency import run_in_threadpool  # a JWKS fetch must not block the event loop

                caller = await run_in_threadpool(self.auth.authenticate, header)
            else:
                caller = self.auth.authenticate(header)
            self.auth.authorize(caller, needed)
        except AuthError as err:
            log.info("refused %s %s: %s", scope.get("method"), scope.get("path"), err.reason)
            await err.response()(scope, receive, send)
            return
        scope[CALLER] = caller
        await self.app(scope, receive, send)


def caller_of(scope: dict) -> Caller | None:
    """The Caller BearerAuth authenticated for this request (None when the middleware did not run)."""
    return scope.get(CALLER)
