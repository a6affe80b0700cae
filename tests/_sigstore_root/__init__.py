"""A private, offline Sigstore for tests: Fulcio CA, CT log, Rekor log and OIDC issuer.

Nothing here patches sigstore-python: the roots are written into a real ``ClientTrustConfig``
(trusted root + signing config pointing at a loopback stand-in), and the library signs and
verifies against it exactly as it would against the public-good instance.

``TestRoot`` holds the keys; ``TestRoot.serve()`` starts the loopback Fulcio + Rekor and
yields a :class:`Running` with the trust config file and a token factory.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from safeload.policy import SigstoreSigner

from ._log import TransparencyLog
from ._pki import CertificateAuthority, key_id, spki_der
from ._server import Knobs, Server, StandIn

__all__ = ["TEST_ISSUER", "Knobs", "Running", "TestRoot", "loopback_only", "signer"]

TEST_ISSUER = "https://issuer.safeload.example"
_NO_REKOR = "https://safeload-test.rekor.invalid"


@dataclass(frozen=True)
class _Signer:
    """A signer *without* the policy model's validation, to test this layer's own checks."""

    identity: str | None
    issuer: str
    identity_regex: str | None = None
    method: str = "sigstore"


def signer(
    identity: str | None = None, *, issuer: str, identity_regex: str | None = None
) -> SigstoreSigner:
    """A trusted Sigstore signer exactly as a policy file would produce it."""
    return SigstoreSigner(identity=identity, identity_regex=identity_regex, issuer=issuer)


@contextmanager
def loopback_only() -> Iterator[None]:
    """Refuse every socket connection that is not to 127.0.0.1: proves a test is offline."""
    real = socket.socket.connect

    def connect(sock: socket.socket, address: Any) -> None:
        host = address[0] if isinstance(address, tuple) else address
        if sock.family in (socket.AF_INET, socket.AF_INET6) and host not in ("127.0.0.1", "::1"):
            raise OSError(f"test tried to reach the network: {address!r}")
        real(sock, address)

    socket.socket.connect = connect  # type: ignore[method-assign]
    try:
        yield
    finally:
        socket.socket.connect = real  # type: ignore[method-assign]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _stamp(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class TestRoot:
    """All private keys of one test Sigstore instance (generated fresh per root)."""

    __test__ = False  # not a pytest test class

    ca: CertificateAuthority = field(default_factory=CertificateAuthority)
    log: TransparencyLog = field(default_factory=TransparencyLog)
    oidc_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )

    def token(
        self,
        *,
        email: str | None = "release-bot@safeload.example",
        subject: str = "release-bot",
        issuer: str = TEST_ISSUER,
        lifetime: dt.timedelta = dt.timedelta(minutes=5),
    ) -> str:
        """An OIDC ID token (ES256 JWT) from the test issuer, as a CI provider would mint it."""
        now = dt.datetime.now(dt.UTC)
        claims: dict[str, Any] = {
            "iss": issuer,
            "sub": subject,
            "aud": "sigstore",
            "iat": int(now.timestamp()),
            "nbf": int(now.timestamp()),
            "exp": int((now + lifetime).timestamp()),
        }
        if email is not None:
            claims["email"] = email
            claims["email_verified"] = True
        return jwt.encode(claims, self.oidc_key, algorithm="ES256")

    def trusted_root(self, rekor_url: str = _NO_REKOR) -> dict[str, Any]:
        """The ``trusted_root.json`` document for this instance (verification material only)."""
        start = _stamp(self.ca.created)

        def tlog(key: ec.EllipticCurvePublicKey, url: str) -> dict[str, Any]:
            return {
                "baseUrl": url,
                "hashAlgorithm": "SHA2_256",
                "publicKey": {
                    "rawBytes": _b64(spki_der(key)),
                    "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                    "validFor": {"start": start},
                },
                "logId": {"keyId": _b64(key_id(key))},
            }

        return {
            "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
            "tlogs": [tlog(self.log.key.public_key(), rekor_url)],
            "certificateAuthorities": [
                {
                    "subject": {
                        "organization": "safeload-test.invalid",
                        "commonName": "safeload-test intermediate",
                    },
                    "uri": "https://safeload-test.fulcio.invalid",
                    "certChain": {
                        "certificates": [
                            {"rawBytes": _b64(c.public_bytes(serialization.Encoding.DER))}
                            for c in self.ca.chain
                        ]
                    },
                    "validFor": {"start": start},
                }
            ],
            "ctlogs": [tlog(self.ca.ct_key.public_key(), "https://safeload-test.ctfe.invalid")],
            "timestampAuthorities": [],
        }

    def trust_config(self, fulcio_url: str, rekor_url: str) -> dict[str, Any]:
        """A ``ClientTrustConfig``: this root plus a signing config naming the given services."""
        start = _stamp(self.ca.created)

        def service(url: str) -> dict[str, Any]:
            return {
                "url": url,
                "majorApiVersion": 1,
                "validFor": {"start": start},
                "operator": "safeload-test.invalid",
            }

        return {
            "mediaType": "application/vnd.dev.sigstore.clienttrustconfig.v0.1+json",
            "trustedRoot": self.trusted_root(rekor_url),
            "signingConfig": {
                "mediaType": "application/vnd.dev.sigstore.signingconfig.v0.2+json",
                "caUrls": [service(fulcio_url)],
                "oidcUrls": [service(f"{fulcio_url}/oidc")],
                "rekorTlogUrls": [service(rekor_url)],
                "tsaUrls": [],
                "rekorTlogConfig": {"selector": "ANY"},
                "tsaConfig": {"selector": "ANY"},
            },
        }

    @contextmanager
    def serve(self, workdir: Path, knobs: Knobs | None = None) -> Iterator[Running]:
        """Run the loopback Fulcio + Rekor; write ``trust_config.json`` into ``workdir``."""
        stand_in = StandIn(self.ca, self.log, self.oidc_key.public_key(), knobs or Knobs())
        with Server(stand_in) as server:
            path = workdir / "trust_config.json"
            path.write_text(json.dumps(self.trust_config(server.url, server.url), indent=1))
            yield Running(root=self, stand_in=stand_in, url=server.url, trust_config=path)


@dataclass
class Running:
    root: TestRoot
    stand_in: StandIn
    url: str
    trust_config: Path

    @property
    def knobs(self) -> Knobs:
        return self.stand_in.knobs
