"""A private Rekor v1 log: RFC 6962 Merkle tree, signed checkpoints and SETs.

Entries are ``dsse/0.0.1`` bodies, canonicalised the way Rekor stores them. Each response has
the exact shape of Rekor's ``POST /api/v1/log/entries`` answer, so sigstore-python's own
client parses it (``TransparencyLogEntry._from_v1_response``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import rfc8785
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from ._pki import key_id


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """Largest power of two strictly below n (RFC 6962 section 2.1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def merkle_root(leaves: list[bytes]) -> bytes:
    if len(leaves) == 1:
        return leaves[0]
    k = _split(len(leaves))
    return node_hash(merkle_root(leaves[:k]), merkle_root(leaves[k:]))


def audit_path(index: int, leaves: list[bytes]) -> list[bytes]:
    """RFC 6962 PATH(m, D[n]), bottom-up: what sigstore's ``verify_merkle_inclusion`` expects."""
    if len(leaves) == 1:
        return []
    k = _split(len(leaves))
    if index < k:
        return [*audit_path(index, leaves[:k]), merkle_root(leaves[k:])]
    return [*audit_path(index - k, leaves[k:]), merkle_root(leaves[:k])]


def dsse_entry_body(proposed: dict[str, Any]) -> bytes:
    """Rekor's canonical ``dsse/0.0.1`` body for a proposed ``{envelope, verifiers}`` entry."""
    content = proposed["spec"]["proposedContent"]
    envelope_text: str = content["envelope"]
    envelope = json.loads(envelope_text)
    payload = base64.b64decode(envelope["payload"])
    verifier: str = content["verifiers"][0]
    body = {
        "apiVersion": "0.0.1",
        "kind": "dsse",
        "spec": {
            "envelopeHash": {
                "algorithm": "sha256",
                "value": hashlib.sha256(envelope_text.encode()).hexdigest(),
            },
            "payloadHash": {"algorithm": "sha256", "value": hashlib.sha256(payload).hexdigest()},
            "signatures": [
                {
                    "signature": base64.b64encode(base64.b64decode(s["sig"])).decode(),
                    "verifier": verifier,
                }
                for s in envelope["signatures"]
            ],
        },
    }
    return rfc8785.dumps(body)


@dataclass
class TransparencyLog:
    """An append-only log signing with ``key``; a few filler leaves make proofs non-trivial."""

    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    origin: str = "safeload-test.rekor.invalid - 1"
    leaves: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        for i in range(5):
            self.leaves.append(leaf_hash(f"filler entry {i}".encode()))

    @property
    def log_id(self) -> bytes:
        return key_id(self.key.public_key())

    def append(
        self,
        body: bytes,
        *,
        integrated_time: int | None = None,
        signing_key: ec.EllipticCurvePrivateKey | None = None,
    ) -> dict[str, Any]:
        """Integrate ``body``; sign checkpoint and SET with ``signing_key`` (default: ours)."""
        signer = signing_key or self.key
        when = int(time.time()) if integrated_time is None else integrated_time
        index = len(self.leaves)
        self.leaves.append(leaf_hash(body))
        size = len(self.leaves)
        root = merkle_root(self.leaves)
        proof = audit_path(index, self.leaves)
        log_id_hex = self.log_id.hex()
        body_b64 = base64.b64encode(body).decode()

        note = f"{self.origin}\n{size}\n{base64.b64encode(root).decode()}\n"
        note_sig = signer.sign(note.encode(), ec.ECDSA(hashes.SHA256()))
        name = self.origin.split(" ")[0]
        checkpoint = (
            f"{note}\n\u2014 {name} {base64.b64encode(self.log_id[:4] + note_sig).decode()}\n"
        )
        set_payload = rfc8785.dumps(
            {"body": body_b64, "integratedTime": when, "logID": log_id_hex, "logIndex": index}
        )
        set_sig = signer.sign(set_payload, ec.ECDSA(hashes.SHA256()))
        return {
            leaf_hash(body).hex(): {
                "body": body_b64,
                "integratedTime": when,
                "logID": log_id_hex,
                "logIndex": index,
                "verification": {
                    "inclusionProof": {
                        "checkpoint": checkpoint,
                        "hashes": [h.hex() for h in proof],
                        "logIndex": index,
                        "rootHash": root.hex(),
                        "treeSize": size,
                    },
                    "signedEntryTimestamp": base64.b64encode(set_sig).decode(),
                },
            }
        }
