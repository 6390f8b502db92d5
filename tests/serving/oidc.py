"""A tiny OIDC issuer for the tests: an RSA key generated here, its JWKS served by a real HTTP server on loopback
(http.server in a thread), and tokens signed with it."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

ISSUER = "https://idp.test/realms/recsys"
AUDIENCE = "recsys-api"


class Issuer:
    """Signs JWTs with its own RSA key; `jwks_url` serves the public half (`fetches` counts the requests)."""

    def __init__(self, kid: str = "test-key-1") -> None:
        self.kid = kid
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.fetches = 0
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                issuer.fetches += 1
                body = json.dumps(issuer.jwks()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def jwks_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"

    def jwks(self) -> dict:
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        return {"keys": [{**public, "kid": self.kid, "use": "sig", "alg": "RS256"}]}

    def token(self, sub: str = "user-1", scope: str | None = "recommend", ttl_s: float = 300, key: Any = None,
              headers: dict | None = None, **claims: Any) -> str:
        now = int(time.time())
        payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now, "exp": now + int(ttl_s), **claims}
        if scope is not None:
            payload["scope"] = scope
        return jwt.encode(payload, key or self.key, algorithm="RS256", headers={"kid": self.kid, **(headers or {})})

    def config_overrides(self) -> dict[str, Any]:
        """serving.auth.jwt settings that trust this issuer (jwks_url last: it needs the other two)."""
        return {"serving.auth.jwt.issuer": ISSUER, "serving.auth.jwt.audience": AUDIENCE,
                "serving.auth.jwt.jwks_url": self.jwks_url}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
