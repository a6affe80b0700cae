"""Loopback Fulcio + Rekor stand-in speaking the two calls sigstore-python's signer makes.

* ``POST /api/v2/signingCert`` (Fulcio): ``{"certificateSigningRequest": b64(PEM CSR)}`` with a
  bearer OIDC token; answers ``{"signedCertificateEmbeddedSct": {"chain": {"certificates":
  [leaf, intermediate, root]}}}``. Like Fulcio, it verifies the token's signature (against
  the test issuer's key), its audience and expiry, and the CSR's proof of possession.
* ``POST /api/v1/log/entries`` (Rekor v1): a proposed ``dsse/0.0.1`` entry; answers the
  integrated entry with inclusion proof, signed checkpoint and SET.
* ``GET /oidc/.well-known/openid-configuration``: OIDC discovery only (no token endpoint
  behind it); tokens come from ``TestRoot.token``.

Bound to 127.0.0.1 on an ephemeral port, request bodies capped, one short-lived thread.
Knobs on :class:`StandIn` let tests make the services misbehave (foreign log key, entries
integrated after the certificate expired, certificates from a foreign CT key).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ._log import TransparencyLog, dsse_entry_body
from ._pki import CertificateAuthority

_MAX_BODY = 1 << 20


@dataclass
class Knobs:
    """How the stand-in misbehaves; defaults are an honest Fulcio and Rekor."""

    log_signing_key: ec.EllipticCurvePrivateKey | None = None
    integrated_time_offset: int = 0
    sct_key: ec.EllipticCurvePrivateKey | None = None


@dataclass
class StandIn:
    ca: CertificateAuthority
    log: TransparencyLog
    oidc_public_key: ec.EllipticCurvePublicKey
    knobs: Knobs = field(default_factory=Knobs)
    requests_seen: list[str] = field(default_factory=list)

    def fulcio(self, body: dict[str, Any], authorization: str) -> dict[str, Any]:
        if not authorization.startswith("Bearer "):
            raise PermissionError("missing bearer token")
        claims = jwt.decode(
            authorization.removeprefix("Bearer "),
            self.oidc_public_key,
            algorithms=["ES256"],
            audience="sigstore",
            options={"require": ["iss", "sub", "aud", "exp", "iat"]},
        )
        csr = x509.load_pem_x509_csr(base64.b64decode(body["certificateSigningRequest"]))
        if not csr.is_signature_valid:
            raise PermissionError("CSR proof of possession failed")
        public_key = csr.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise PermissionError("only EC keys")
        san: x509.GeneralName
        if "email" in claims:
            san = x509.RFC822Name(claims["email"])
        else:
            san = x509.UniformResourceIdentifier(claims["sub"])
        now = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(seconds=5)
        leaf = self.ca.issue(
            public_key, san=san, issuer=claims["iss"], not_before=now, sct_key=self.knobs.sct_key
        )
        pems = [c.public_bytes(serialization.Encoding.PEM).decode() for c in [leaf, *self.ca.chain]]
        return {"signedCertificateEmbeddedSct": {"chain": {"certificates": pems}}}

    def rekor(self, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("kind") != "dsse" or body.get("apiVersion") != "0.0.1":
            raise ValueError(f"unsupported entry {body.get('kind')}/{body.get('apiVersion')}")
        entry = dsse_entry_body(body)
        when = int(dt.datetime.now(dt.UTC).timestamp()) + self.knobs.integrated_time_offset
        return self.log.append(entry, integrated_time=when, signing_key=self.knobs.log_signing_key)


def _handler(stand_in: StandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = 10

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
            pass

        def do_GET(self) -> None:
            # OIDC discovery, which some clients (model_signing) fetch even when given a token.
            if self.path != "/oidc/.well-known/openid-configuration":
                self._reply(404, {"code": 404, "message": "not found"})
                return
            host, port = self.server.server_address[:2]
            base = f"http://{host!s}:{port}/oidc"
            self._reply(
                200,
                {
                    "issuer": base,
                    "authorization_endpoint": f"{base}/auth",
                    "token_endpoint": f"{base}/token",
                },
            )

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            if length > _MAX_BODY:
                self._reply(413, {"message": "too large"})
                return
            stand_in.requests_seen.append(self.path)
            try:
                body = json.loads(self.rfile.read(length))
                if self.path == "/api/v2/signingCert":
                    answer = stand_in.fulcio(body, self.headers.get("Authorization", ""))
                elif self.path == "/api/v1/log/entries":
                    answer = stand_in.rekor(body)
                else:
                    self._reply(404, {"code": 404, "message": "not found"})
                    return
            except (PermissionError, jwt.InvalidTokenError) as exc:
                self._reply(401, {"code": 401, "message": str(exc)})
                return
            except (ValueError, KeyError) as exc:
                self._reply(400, {"code": 400, "message": str(exc)})
                return
            self._reply(201, answer)

        def _reply(self, status: int, doc: dict[str, Any]) -> None:
            data = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


class Server:
    """Context manager: serve ``stand_in`` on 127.0.0.1 until exit."""

    def __init__(self, stand_in: StandIn) -> None:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(stand_in))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> Server:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)
