"""``safeload sign {sigstore,key,certificate} MODEL_DIR``: write an OMS ``model.sig``."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click

import safeload
from safeload._cli._signing_common import common_options, fail, hashing_progress
from safeload.errors import SafeloadError, SourceError

__all__ = ["sign"]


def _hashing_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--serialization", type=click.Choice(["shards", "files"]),
                        default="shards", show_default=True,
                        help="shards: big files use every core; files: one digest per file.")(func)
    func = click.option("--hash", "hash_type", type=click.Choice(["sha256", "blake3"]),
                        default="sha256", show_default=True)(func)
    func = click.option("--shard-size", type=click.IntRange(min=1 << 20),
                        default=256 << 20, show_default=True)(func)
    return func


def _run(model_dir: str, fmt: str, signature: tuple[str, ...], **kwargs: Any) -> None:
    try:
        with hashing_progress() as progress:
            path = safeload.sign(model_dir, signature=signature[0] if signature else None,
                                 progress=progress, **kwargs)
    except SafeloadError as exc:
        fail(exc, fmt)
    except (OSError, ValueError) as exc:
        fail(SourceError("cannot sign", path=model_dir, detail=str(exc)), fmt)
    if fmt == "json":
        click.echo(json.dumps({"signed": True, "signature": str(path)}))
    else:
        click.echo(f"Signed {model_dir} -> {path}")


@click.group("sign")
def sign() -> None:
    """Sign a model folder (OMS format): sigstore, key or certificate."""


@sign.command("sigstore")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--identity-token", envvar=["SAFELOAD_IDENTITY_TOKEN", "SIGSTORE_ID_TOKEN"],
              help="OIDC identity token (default: detect an ambient CI credential).")
@_hashing_options
@common_options
def sign_sigstore(model_dir: str, identity_token: str | None, serialization: str,
                  hash_type: str, shard_size: int, signature: tuple[str, ...],
                  trust_config: str | None, offline: bool, allow_ca_leaf: bool | None,
                  policy: str | None, fmt: str) -> None:
    """Keyless signing with Sigstore (Fulcio certificate + Rekor log entry)."""
    _run(model_dir, fmt, signature, method="sigstore", identity_token=identity_token,
         trust_config=trust_config, serialization=serialization, hash_type=hash_type,
         shard_size=shard_size)


@sign.command("key")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--private-key", required=True, type=click.Path(exists=True, dir_okay=False),
              help="PEM private key: ECDSA P-256/P-384 or Ed25519.")
@_hashing_options
@common_options
def sign_key(model_dir: str, private_key: str, serialization: str, hash_type: str,
             shard_size: int, signature: tuple[str, ...], trust_config: str | None,
             offline: bool, allow_ca_leaf: bool | None, policy: str | None,
             fmt: str) -> None:
    """Sign with a private key; verifiers trust the matching public key."""
    _run(model_dir, fmt, signature, method="key", private_key=private_key,
         serialization=serialization, hash_type=hash_type, shard_size=shard_size)


@sign.command("certificate")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--private-key", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--signing-cert", required=True, type=click.Path(exists=True, dir_okay=False),
              help="PEM certificate for the private key.")
@click.option("--cert-chain", "cert_chain", multiple=True,
              type=click.Path(exists=True, dir_okay=False),
              help="Intermediate certificates to include (PEM, repeatable).")
@_hashing_options
@common_options
def sign_certificate(model_dir: str, private_key: str, signing_cert: str,
                     cert_chain: tuple[str, ...], serialization: str, hash_type: str,
                     shard_size: int, signature: tuple[str, ...], trust_config: str | None,
                     offline: bool, allow_ca_leaf: bool | None, policy: str | None,
                     fmt: str) -> None:
    """Sign with a private key whose certificate chains to the verifier's trust anchors."""
    _run(model_dir, fmt, signature, method="certificate", private_key=private_key,
         signing_cert=signing_cert, cert_chain=cert_chain, serialization=serialization,
         hash_type=hash_type, shard_size=shard_size)
