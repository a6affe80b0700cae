"""Sign a model folder in the OMS format: hash it, build the statement, sign, write model.sig.

The signature file is written atomically (temporary file, then rename) so a crash never
leaves a truncated ``model.sig`` that a later verify would report as tampering.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

from safeload.errors import UsageError
from safeload.signing._certificate import load_certificates, sign_certificate
from safeload.signing._hashing import DEFAULT_IGNORE_PATHS, Progress, hash_model
from safeload.signing._key import load_private_key, sign_key
from safeload.signing._manifest import DEFAULT_SHARD_SIZE, HashType, Method, build_statement

__all__ = ["sign"]

SignMethod = Literal["key", "certificate", "sigstore"]


def sign(
    path: str | os.PathLike[str],
    *,
    method: SignMethod,
    private_key: str | os.PathLike[str] | bytes | None = None,
    password: bytes | None = None,
    signing_cert: str | os.PathLike[str] | None = None,
    cert_chain: Sequence[str | os.PathLike[str]] = (),
    identity_token: str | None = None,
    trust_config: str | os.PathLike[str] | None = None,
    signature: str | os.PathLike[str] | None = None,
    serialization: Method = "shards",
    hash_type: HashType = "sha256",
    shard_size: int = DEFAULT_SHARD_SIZE,
    ignore_paths: Iterable[str] = (),
    allow_symlinks: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Sign the folder ``path``; returns where the signature was written.

    ``serialization="shards"`` (the default) lets verification spread one big file over every
    core; note that it also covers empty files (as ``name:0:0``), which model_signing's shard
    serializer skips; use ``"files"`` for byte-identical behaviour with model_signing there.
    """
    root = Path(path)
    sig_path = Path(signature) if signature is not None else root / "model.sig"
    ignored = [*DEFAULT_IGNORE_PATHS, *ignore_paths]
    real_root, real_sig = root.resolve(), sig_path.resolve()
    if real_sig.is_relative_to(real_root):
        ignored.append(real_sig.relative_to(real_root).as_posix())
    # Load the key material before hashing: a wrong password should not cost a full hash.
    if method in ("key", "certificate"):
        if private_key is None:
            raise UsageError(f"{method} signing needs a private key", rule="signing.key")
        key = load_private_key(private_key, password)
    manifest = hash_model(root, method=serialization, hash_type=hash_type, shard_size=shard_size,
                          ignore_paths=ignored, allow_symlinks=allow_symlinks, progress=progress)
    payload = build_statement(manifest)
    if method == "key":
        bundle = sign_key(payload, key)
    elif method == "certificate":
        if signing_cert is None:
            raise UsageError("certificate signing needs --signing-cert", rule="signing.certificate")
        leaf = load_certificates(signing_cert)
        if len(leaf) != 1:
            raise UsageError("--signing-cert must hold exactly one certificate",
                             path=str(signing_cert))
        chain = [c for p in cert_chain for c in load_certificates(p)]
        bundle = sign_certificate(payload, key, leaf[0], chain)
    elif method == "sigstore":
        from safeload.signing._sigstore import sign_sigstore

        bundle = sign_sigstore(payload, identity_token=identity_token,
                               trust_config=None if trust_config is None else Path(trust_config))
    else:
        raise UsageError(f"unknown signing method {method!r}")
    _write_atomic(sig_path, bundle)
    return sig_path


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".model.sig.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
