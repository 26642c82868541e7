"""A local OIDC issuer for the tests: OpenID discovery and a JWKS for each provider's issuer path, tokens
shaped like each CI provider's, and GitHub Actions' token request endpoint (ACTIONS_ID_TOKEN_REQUEST_URL)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

DEPOT_AUDIENCE = "https://depot.dev"
REQUEST_TOKEN = "actions-request-token"


@dataclass
class LocalIssuer:
    key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    kid: str = "test-key-1"
    github_claims: dict[str, Any] = field(default_factory=dict)
    jwks_fetches: int = 0
    _server: ThreadingHTTPServer | None = None

    @property
    def base(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def issuer(self, provider: str, circleci_org: str = "") -> str:
        if provider == "circleci":
            return f"{self.base}/circleci/org/{circleci_org}"
        return f"{self.base}/{provider}"

    def server_args(self) -> list[str]:
        return [
            arg
            for provider, path in (
                ("github", "github"),
                ("buildkite", "buildkite"),
                ("circleci", "circleci/org"),
                ("gitlab", "gitlab"),
            )
            for arg in ("--oidc-issuer", f"{provider}={self.base}/{path}")
        ]

    def mint(
        self,
        issuer: str,
        claims: dict[str, Any],
        *,
        audience: str = DEPOT_AUDIENCE,
        lifetime: int = 300,
        issued_ago: int = 0,
        key: rsa.RSAPrivateKey | None = None,
        kid: str | None = None,
        algorithm: str = "RS256",
    ) -> str:
        now = int(time.time()) - issued_ago
        payload = {
            "iss": issuer,
            "aud": audience,
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "jti": str(uuid.uuid4()),
            **claims,
        }
        return jwt.encode(payload, key or self.key, algorithm=algorithm, headers={"kid": kid or self.kid})

    def start(self) -> LocalIssuer:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _json(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                if url.path.endswith("/.well-known/openid-configuration"):
                    prefix = url.path.removesuffix("/.well-known/openid-configuration")
                    self._json(200, {"issuer": issuer.base + prefix, "jwks_uri": issuer.base + "/jwks"})
                elif url.path == "/jwks":
                    issuer.jwks_fetches += 1
                    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(issuer.key.public_key()))
                    self._json(200, {"keys": [{**jwk, "kid": issuer.kid, "use": "sig", "alg": "RS256"}]})
                elif url.path == "/github/request-token":
                    # What GitHub Actions' runtime answers: {"value": <JWT>} for the audience asked.
                    if self.headers.get("authorization", "").lower() != f"bearer {REQUEST_TOKEN}":
                        self._json(401, {"message": "bad request token"})
                        return
                    audience = parse_qs(url.query).get("audience", [DEPOT_AUDIENCE])[0]
                    token = issuer.mint(issuer.issuer("github"), issuer.github_claims, audience=audience)
                    self._json(200, {"value": token})
                else:
                    self._json(404, {})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def github_claims(owner: str, repository: str) -> dict[str, Any]:
    """Shaped like a GitHub Actions token's claims."""
    return {
        "sub": f"repo:{owner}/{repository}:ref:refs/heads/main",
        "repository": f"{owner}/{repository}",
        "repository_owner": owner,
        "repository_owner_id": "1234",
        "ref": "refs/heads/main",
        "workflow": "build",
        "event_name": "push",
        "actor": "someone",
    }
