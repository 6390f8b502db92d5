"""serving/auth.py: API keys stored as hashes and re-read on change, JWTs against a JWKS served on loopback, scopes,
the history rule, and the ASGI middleware's 401/403 answers (on a small Starlette app)."""

import base64
import json
import os
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from serving import auth
from tests.serving.oidc import AUDIENCE, ISSUER


@pytest.fixture
def verifier(issuer):
    return auth.JwtVerifier(issuer.jwks_url, ISSUER, AUDIENCE, ["RS256", "ES256"], leeway_s=0)


def refused(fn, *args) -> auth.AuthError:
    with pytest.raises(auth.AuthError) as info:
        fn(*args)
    return info.value


# ---------------------------------------------------------------------------------------------------- API keys
def test_keys_file_stores_only_hashes(tmp_path):
    path = tmp_path / "keys.json"
    record, token = auth.create_key(path, "ci", ["recommend"])
    text = path.read_text()
    secret = token.split("_", 2)[2]
    assert token not in text and secret not in text
    assert json.loads(text)["keys"][0]["sha256"] == auth.token_hash(token)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    caller = auth.KeyStore(path).verify(token)
    assert caller == auth.Caller("api_key", record.id, frozenset({"recommend"}))
    assert "sha256" not in record.public()


def test_unknown_tampered_and_malformed_keys_are_refused(tmp_path):
    path = tmp_path / "keys.json"
    record, token = auth.create_key(path, "ci", ["recommend"])
    store = auth.KeyStore(path)
    err = refused(store.verify, token[:-1] + ("A" if token[-1] != "A" else "B"))  # right id, wrong secret
    assert err.status == 401 and err.reason == "unknown_key" and record.id in err.message
    assert refused(store.verify, "rsk_000000000000_nope").reason == "unknown_key"
    assert refused(store.verify, "rsk_nosecret").reason == "malformed_key"


def test_rotation_by_rewriting_the_file_needs_no_restart(tmp_path):
    path = tmp_path / "keys.json"
    old, old_token = auth.create_key(path, "client", ["recommend"])
    store = auth.KeyStore(path)
    assert store.verify(old_token).name == old.id
    new, new_token = auth.create_key(path, "client (rotated)", ["recommend"])
    assert store.verify(new_token).name == new.id  # picked up at once: a new file identity
    auth.revoke_key(path, old.id)
    assert refused(store.verify, old_token).reason == "unknown_key"
    assert store.verify(new_token).name == new.id
    # a rewrite in place by another tool (same inode) is noticed too
    data = json.loads(path.read_text())
    data["keys"][0]["scopes"] = ["recommend", "history:read"]
    path.write_text(json.dumps(data))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    assert store.verify(new_token).scopes == {"recommend", "history:read"}


def test_a_broken_keys_file_keeps_the_last_good_keys(tmp_path):
    path = tmp_path / "keys.json"
    _, token = auth.create_key(path, "client", ["admin"])
    store = auth.KeyStore(path)
    assert store.verify(token).allows("interactions:write")
    path.write_text("{not json")
    assert store.verify(token).name  # still served from the keys loaded before
    assert refused(auth.KeyStore(tmp_path / "absent.json").verify, token).reason == "unknown_key"


def test_key_management_rejects_bad_input(tmp_path):
    path = tmp_path / "keys.json"
    with pytest.raises(auth.KeyFileError, match="unknown scope 'write'"):
        auth.create_key(path, "x", ["recommend", "write"])
    with pytest.raises(auth.KeyFileError, match="at least one scope"):
        auth.create_key(path, "x", [])
    with pytest.raises(auth.KeyFileError, match="key name"):
        auth.create_key(path, " ", ["recommend"])
    with pytest.raises(auth.KeyFileError, match="no key with id 'abc'"):
        auth.revoke_key(path, "abc")
    token_file = auth.write_token_file(tmp_path / "token", "rsk_x_y")
    assert oct(token_file.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(FileExistsError):
        auth.write_token_file(token_file, "rsk_x_z")


def test_ten_thousand_key_checks_are_cheap(tmp_path):
    path = tmp_path / "keys.json"
    for n in range(50):
        auth.create_key(path, f"client {n}", ["recommend"])
    _, token = auth.create_key(path, "measured", ["recommend"])
    authenticator = auth.Authenticator(auth.KeyStore(path))
    header = [f"Bearer {token}".encode()]
    authenticator.authenticate(header)
    t0 = time.perf_counter()
    for _ in range(10_000):
        auth.Authenticator.authorize(authenticator.authenticate(header), "recommend")
    per_check_us = (time.perf_counter() - t0) / 10_000 * 1e6
    print(f"API key check (stat + SHA-256 + compare + scope): {per_check_us:.1f} us")
    assert per_check_us < 200


# ---------------------------------------------------------------------------------------------------- JWTs
def test_valid_jwt_gives_subject_and_scopes(issuer, verifier):
    caller = verifier.verify(issuer.token(sub="42", scope="recommend history:read openid"))
    assert caller == auth.Caller("jwt", "42", frozenset({"recommend", "history:read"}), "42")
    assert verifier.verify(issuer.token(scope=None, scp=["interactions:write"])).scopes == {"interactions:write"}


@pytest.mark.parametrize(("claims", "reason"), [
    ({"ttl_s": -60}, "expired_token"),
    ({"iss": "https://evil.test"}, "wrong_issuer"),
    ({"aud": "another-api"}, "wrong_audience"),
])
def test_invalid_jwt_claims_are_refused(issuer, verifier, claims, reason):
    err = refused(verifier.verify, issuer.token(**claims))
    assert err.status == 401 and err.reason == reason


def test_jwt_signed_by_another_key_is_refused(issuer, verifier):
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert refused(verifier.verify, issuer.token(key=other)).reason == "bad_signature"


def test_alg_none_is_refused_and_symmetric_algorithms_cannot_be_configured(issuer, verifier):
    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    claims = jwt.decode(issuer.token(), options={"verify_signature": False})
    err = refused(verifier.verify, f"{part({'alg': 'none', 'kid': issuer.kid})}.{part(claims)}.")
    assert err.reason == "algorithm_not_allowed" and "'none'" in err.message
    with pytest.raises(ValueError, match="asymmetric"):
        auth.JwtVerifier(issuer.jwks_url, ISSUER, AUDIENCE, ["HS256"])


def _pem():
    from cryptography.hazmat.primitives import serialization

    return serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo


def test_hs256_signed_with_the_public_key_is_refused(issuer, verifier):
    """The classic key-confusion attack: HMAC over the token with the RSA public key (PEM) as the secret."""
    import hashlib
    import hmac

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    claims = jwt.decode(issuer.token(), options={"verify_signature": False})
    pem = issuer.key.public_key().public_bytes(*_pem())
    signing = f"{b64(json.dumps({'alg': 'HS256', 'kid': issuer.kid}).encode())}.{b64(json.dumps(claims).encode())}"
    forged = f"{signing}.{b64(hmac.new(pem, signing.encode(), hashlib.sha256).digest())}"
    assert refused(verifier.verify, forged).reason == "algorithm_not_allowed"


def test_jwks_is_cached_and_unknown_kids_do_not_refetch_each_time(issuer, verifier):
    before = issuer.fetches
    for _ in range(5):
        verifier.verify(issuer.token())
    assert issuer.fetches - before == 1
    for _ in range(5):
        assert refused(verifier.verify, issuer.token(headers={"kid": "forged"})).reason == "unknown_signing_key"
    assert issuer.fetches - before <= 2  # one forced refresh at most per JWKS_MIN_REFRESH_S


def test_missing_scope_is_a_403_naming_it(issuer, verifier):
    caller = verifier.verify(issuer.token(scope="recommend"))
    err = refused(auth.Authenticator.authorize, caller, "interactions:write")
    assert err.status == 403 and err.scope == "interactions:write" and "'interactions:write'" in err.message
    auth.Authenticator.authorize(caller, "recommend")


# ---------------------------------------------------------------------------------------------------- rules
def test_history_rule():
    key = auth.Caller("api_key", "k1", frozenset({"recommend"}))
    assert not auth.may_read_history(key, 7)
    assert auth.may_read_history(auth.Caller("api_key", "k2", frozenset({"recommend", "history:read"})), 7)
    assert auth.may_read_history(auth.Caller("api_key", "k3", frozenset({"admin"})), 7)
    own = auth.Caller("jwt", "7", frozenset({"recommend"}), "7")
    assert auth.may_read_history(own, 7) and auth.may_read_history(own, "7")
    assert not auth.may_read_history(own, 8)
    assert not auth.may_read_history(auth.Caller("api_key", "7", frozenset({"recommend"})), 7)  # key ids are not users
    assert not auth.may_read_history(None, 7)


def test_route_scopes():
    assert auth.required_scope("/recommend") == "recommend"
    assert auth.required_scope("/interactions") == "interactions:write"
    for open_path in ("/healthz", "/readyz", "/livez", "/docs.json", "/", "/static_content/index.css"):
        assert auth.required_scope(open_path) is None
    assert auth.required_scope("/metrics") == "admin"
    assert auth.required_scope("/anything-else") == "admin"


# ---------------------------------------------------------------------------------------------------- middleware
@pytest.fixture
def client(tmp_path, issuer):
    path = tmp_path / "keys.json"

    async def whoami(request):
        caller = auth.caller_of(request.scope)  # None on the open routes
        return JSONResponse({"name": caller.name, "kind": caller.kind} if caller else {})

    app = Starlette(routes=[Route(p, whoami, methods=["GET", "POST"]) for p in ("/recommend", "/interactions",
                                                                              "/metrics", "/healthz")])
    verifier = auth.JwtVerifier(issuer.jwks_url, ISSUER, AUDIENCE, ["RS256"])
    wrapped = auth.BearerAuth(app, auth.Authenticator(auth.KeyStore(path), verifier))
    with TestClient(wrapped) as test_client:
        test_client.keys_path = path
        yield test_client


def test_middleware_answers_401_and_403_that_say_why(client, issuer):
    resp = client.post("/recommend")
    assert resp.status_code == 401 and resp.json()["reason"] == "missing_header"
    assert "Authorization" in resp.json()["error"] and resp.headers["www-authenticate"] == 'Bearer realm="recsys"'
    resp = client.post("/recommend", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert resp.status_code == 401 and resp.json()["reason"] == "malformed_header"
    assert 'error="invalid_token"' in resp.headers["www-authenticate"]
    resp = client.post("/recommend", headers={"Authorization": "Bearer rsk_0123456789ab_unknown"})
    assert resp.status_code == 401 and resp.json()["reason"] == "unknown_key"
    resp = client.post("/recommend", headers={"Authorization": f"Bearer {issuer.token(ttl_s=-60)}"})
    assert resp.status_code == 401 and resp.json()["reason"] == "expired_token"
    resp = client.post("/recommend", headers={"Authorization": f"Bearer {issuer.token(aud='x')}"})
    assert resp.status_code == 401 and resp.json()["reason"] == "wrong_audience"

    _, token = auth.create_key(client.keys_path, "web", ["recommend"])
    assert client.post("/recommend", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    resp = client.post("/interactions", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 403 and resp.json()["required_scope"] == "interactions:write"
    assert 'scope="interactions:write"' in resp.headers["www-authenticate"]
    assert client.get("/metrics", headers={"Authorization": f"Bearer {token}"}).status_code == 403
    jwt_headers = {"Authorization": f"Bearer {issuer.token(sub='u-9', scope='admin')}"}
    assert client.get("/metrics", headers=jwt_headers).json() == {"name": "u-9", "kind": "jwt"}
    assert client.get("/healthz").json() == {}  # open: no credentials needed, no caller
