"""``safeload verify MODEL_DIR``: check a model folder's OMS signature(s).

Signers come from the flags (``--key``, ``--cert-chain [--identity]``, ``--identity
--issuer``) or, when none is given, from the policy's ``trust.signers``. Exit 0 valid,
1 invalid, 2 usage or I/O error.
"""

from __future__ import annotations

import json
from typing import Any

import click

import safeload
from safeload._cli._signing_common import common_options, fail, hashing_progress
from safeload.errors import SafeloadError, SourceError, UsageError

__all__ = ["verify"]


def _signers(identity: str | None, identity_regex: str | None, issuer: str | None,
             keys: tuple[str, ...], cert_chains: tuple[str, ...]) -> list[Any] | None:
    from safeload.policy import CertificateSigner, KeySigner, SigstoreSigner

    out: list[Any] = [KeySigner(public_key=k) for k in keys]
    out += [CertificateSigner(ca_chain=c, identity=identity) for c in cert_chains]
    if issuer is not None:
        if (identity is None) == (identity_regex is None):
            raise UsageError("--issuer needs exactly one of --identity or --identity-regex")
        out.append(SigstoreSigner(identity=identity, identity_regex=identity_regex, issuer=issuer))
    elif (identity or identity_regex) and not cert_chains:
        raise UsageError("--identity needs --issuer (Sigstore) or --cert-chain (certificate)")
    return out or None


@click.command("verify")
@click.argument("model_dir", type=click.Path())
@click.option("--identity", "--cert-identity", "identity",
              help="Signer identity: Sigstore SAN, or SAN/CN a --cert-chain leaf must carry.")
@click.option("--identity-regex", "--cert-identity-regexp", "identity_regex",
              help="Sigstore: anchored regex (^...$) the signer identity must match.")
@click.option("--issuer", "--cert-oidc-issuer", "--identity-provider", "issuer",
              help="Sigstore: OIDC issuer URL of the signer.")
@click.option("--key", "key", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Trusted PEM public key (repeatable).")
@click.option("--cert-chain", "cert_chain", multiple=True,
              type=click.Path(exists=True, dir_okay=False),
              help="Trust anchors (PEM) for certificate signatures (repeatable).")
@click.option("--ignore-paths", "ignore_paths", multiple=True,
              help="Files or folders to leave out of verification (repeatable).")
@common_options
def verify(model_dir: str, identity: str | None, identity_regex: str | None, issuer: str | None,
           key: tuple[str, ...], cert_chain: tuple[str, ...], ignore_paths: tuple[str, ...],
           signature: tuple[str, ...], trust_config: str | None, offline: bool,
           allow_ca_leaf: bool | None, policy: str | None, fmt: str) -> None:
    """Verify MODEL_DIR against its signature(s); exit 0 valid, 1 invalid, 2 error."""
    try:
        signers = _signers(identity, identity_regex, issuer, key, cert_chain)
        with hashing_progress() as progress:
            model = safeload.verify(
                model_dir, policy=policy, signature=signature[0] if signature else None,
                signatures=signature[1:], signers=signers, ignore_paths=ignore_paths,
                keep_bytes=False, trust_config=trust_config, offline=offline,
                allow_ca_leaf=allow_ca_leaf, progress=progress,
            )
    except SafeloadError as exc:
        fail(exc, fmt)
    except (OSError, ValueError) as exc:
        fail(SourceError("cannot verify", path=model_dir, detail=str(exc)), fmt)
    if fmt == "json":
        click.echo(json.dumps(model.to_dict(), indent=2))
        return
    click.echo(f"Verified {model.root}")
    click.echo(f"  signed by: {', '.join(model.signers)}")
    click.echo(f"  model digest: {model.model_digest}")
    click.echo(f"  files: {len(model.files)} ({model.serialization.method}, "
               f"{model.serialization.hash_type})")
    if model.signer_ignored:
        click.echo("  NOT verified (left out by the signer's ignore_paths): "
                   + ", ".join(model.signer_ignored))
    if model.verifier_ignored:
        click.echo("  ignored (--ignore-paths / policy): " + ", ".join(model.verifier_ignored))
