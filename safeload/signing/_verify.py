"""Verify a model folder's OMS signature(s), then hand back exactly the bytes that were hashed.

Order matters: signatures are checked first (cheap, and nothing signed is trusted before
that), then the folder listing is compared with the signed names (extra, missing or renamed
files fail before any hashing), then every file is read once, hashed and kept.

Whose ignore list counts. OMS statements carry the *signer's* ``ignore_paths``. Honouring
them blindly would let whoever controls the signature hide files from verification; ignoring
them breaks the official vectors (``ignore-me`` in model-transparency v1.1.0). The rule here:
a file covered only by the signer's list is accepted as *unverified*: it is reported in
``VerifiedModel.signer_ignored`` and is never part of ``VerifiedModel.files``, so it can
never be loaded through the verified model. Only the verifier's own ``ignore_paths`` (the
call's and the policy's) make a present file disappear from the report as well.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from safeload.errors import (
    PolicyViolation,
    SafeloadError,
    SourceError,
    UsageError,
    VerificationError,
)
from safeload.signing._bundle import MAX_BUNDLE_BYTES, ParsedBundle, parse_bundle
from safeload.signing._certificate import (
    certificate_identities,
    load_certificates,
    verify_certificate,
)
from safeload.signing._hashing import FileResult, Keep, Progress, hash_entries, shard_ranges
from safeload.signing._key import key_hint, load_public_key, verify_key
from safeload.signing._manifest import Manifest, parse_statement, split_shard_name
from safeload.signing._trust import (
    TrustSettings,
    anchor_fingerprint,
    settings_from_policy,
    spki_fingerprint,
)
from safeload.signing._verified import (
    VerificationRecord,
    VerifiedFile,
    VerifiedModel,
    VerifiedSigner,
    _Owned,
)
from safeload.source import (
    ModelEntry,
    list_model_files,
    parse_hf_ref,
    path_matcher,
    resolve_hf_ref,
)

__all__ = ["relative_ignore_paths", "verify", "verify_signature_file"]

logger = logging.getLogger(__name__)


def relative_ignore_paths(root: Path, paths: Iterable[str | os.PathLike[str]]) -> list[str]:
    """Ignore paths relative to ``root``: absolute or cwd-relative paths inside it are
    converted (``--ignore-paths model/ignore-me``), anything else is taken as relative."""
    out: list[str] = []
    real_root = root.resolve()
    for p in paths:
        candidate = Path(p)
        resolved = candidate.resolve() if (candidate.is_absolute() or candidate.exists()) else None
        if resolved is not None and resolved.is_relative_to(real_root) and resolved != real_root:
            out.append(resolved.relative_to(real_root).as_posix())
        elif candidate.is_absolute():
            raise UsageError("ignore path is outside the model folder", path=str(p))
        else:
            out.append(candidate.as_posix())
    return out


def _read_signature(path: Path) -> bytes:
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_BUNDLE_BYTES + 1)
    except FileNotFoundError:
        raise VerificationError("signature file not found", path=str(path),
                                rule="trust.require_signature") from None
    except OSError as exc:
        raise VerificationError("signature file cannot be read", path=str(path),
                                detail=str(exc)) from exc
    return data


def _signers(settings: TrustSettings, method: str) -> list[Any]:
    return [s for s in settings.signers if getattr(s, "method", None) == method]


def verify_signature_file(path: Path, settings: TrustSettings, *, offline: bool = True
                          ) -> tuple[str, Manifest]:
    """Check one signature file against the trusted signers: (signer, signed manifest)."""
    signer, manifest = _verify_signature_file(path, settings, offline=offline)
    return signer.description, manifest


def _verify_signature_file(path: Path, settings: TrustSettings, *, offline: bool
                           ) -> tuple[VerifiedSigner, Manifest]:
    try:
        bundle = parse_bundle(_read_signature(path))
        who, payload, compat = _verify_bundle(bundle, settings, offline=offline)
        manifest = parse_statement(payload)
    except SafeloadError as exc:
        raise exc.with_path(str(path)) from None
    if compat and not manifest.legacy:
        raise VerificationError(
            "legacy (v0.2) signature encoding used for a current statement", path=str(path),
            rule="signature.dsse",
        )
    return who, manifest


def _verify_bundle(bundle: ParsedBundle, settings: TrustSettings, *, offline: bool
                   ) -> tuple[VerifiedSigner, bytes, bool]:
    """Verify against the trusted signers and say who signed, as facts a policy can match."""
    if bundle.method == "key":
        keys = [load_public_key(s.public_key) for s in _signers(settings, "key")]
        who, compat = verify_key(bundle, keys)
        hint = who.removeprefix("key:sha256:")
        key = next(k for k in keys if key_hint(k) == hint)
        return (VerifiedSigner("key", who, key_fingerprint=spki_fingerprint(key)),
                bundle.envelope.payload, compat)
    if bundle.method == "certificate":
        signers = _signers(settings, "certificate")
        if not signers:
            raise VerificationError("no trusted certificate authority configured",
                                    rule="trust.signers")
        last: VerificationError | None = None
        for s in signers:
            anchors = load_certificates(s.ca_chain)
            identity = getattr(s, "identity", None)
            try:
                who, compat = verify_certificate(bundle, anchors=anchors, identity=identity,
                                                 allow_ca_leaf=settings.allow_ca_leaf)
            except VerificationError as exc:
                last = exc
                continue
            return (_certificate_signer(bundle, who, anchors, identity, settings),
                    bundle.envelope.payload, compat)
        assert last is not None
        raise last
    signers = _signers(settings, "sigstore")
    if not signers:
        raise VerificationError("no trusted Sigstore identity configured", rule="trust.signers")
    try:
        from safeload.signing._sigstore import verify_sigstore
    except ImportError:
        raise VerificationError("Sigstore verification is not available in this build",
                                rule="trust.signers") from None
    who, payload = verify_sigstore(bundle.raw, signers=signers,
                                   trust_config=settings.trust_config, offline=offline)
    return _sigstore_signer(str(who)), bytes(payload), False


def _sigstore_signer(who: str) -> VerifiedSigner:
    """``sigstore:<san> (<issuer>)``, as ``_sigstore`` reports the SAN that matched."""
    san, sep, issuer = who.removeprefix("sigstore:").rpartition(" (")
    if not sep or not issuer.endswith(")"):
        raise VerificationError("unexpected Sigstore signer description", rule="trust.signers",
                                detail=who)
    return VerifiedSigner("sigstore", who, identity=san, issuer=issuer[:-1])


def _certificate_signer(bundle: ParsedBundle, who: str, anchors: Sequence[Any],
                        identity: str | None, settings: TrustSettings) -> VerifiedSigner:
    """Which anchor the chain led to: with several, each is tried alone (milliseconds)."""
    from cryptography import x509

    leaf = x509.load_der_x509_certificate(bundle.certificates[0])
    anchor = anchors[0]
    if len(anchors) > 1:
        for candidate in anchors:
            try:
                verify_certificate(bundle, anchors=[candidate], identity=identity,
                                   allow_ca_leaf=settings.allow_ca_leaf)
            except VerificationError:
                continue
            anchor = candidate
            break
        else:  # pragma: no cover - the whole store verified, so one anchor alone must
            raise VerificationError("cannot tell which trust anchor the chain leads to",
                                    rule="certificate.chain")
    return VerifiedSigner(
        "certificate", who, identity=who.removeprefix("certificate:"),
        anchor_fingerprint=anchor_fingerprint(anchor),
        leaf_identities=tuple(certificate_identities(leaf)),
    )


def _resolve_root(path: str | os.PathLike[str], settings: TrustSettings) -> Path:
    root = Path(path)
    text = os.fspath(path)
    if not root.exists() and "/" in text and not text.startswith((".", "/")):
        return _resolve_hf(text, settings)
    if not root.is_dir():
        raise SourceError("model folder not found", path=text, rule="source.folder")
    return root


def _resolve_hf(ref: str, settings: TrustSettings) -> Path:
    """A cached Hugging Face snapshot, if the policy's ``sources`` rules allow this ref.

    The same rules ``from_pretrained`` applies, so a signature cannot launder a repo the
    policy does not allow, and a branch name cannot stand in for a pinned commit.
    """
    repo, _ = parse_hf_ref(ref)
    allowed = settings.allowed_repos
    if allowed is not None and not any(fnmatch.fnmatchcase(repo, p) for p in allowed):
        error = PolicyViolation(f"repo {repo!r} is not an allowed source", path=ref,
                                rule="sources.allowed_repos", detail=", ".join(allowed) or "none")
        if not settings.audit:
            raise error
        logger.warning("%s (audit mode: continuing)", error)
    return resolve_hf_ref(ref, require_revision=settings.require_revision)


def _expected_names(entry: ModelEntry, manifest: Manifest) -> list[str]:
    ser = manifest.serialization
    if ser.method == "shards":
        assert ser.shard_size is not None
        return [f"{entry.name}:{s}:{e}" for s, e in shard_ranges(entry.size, ser.shard_size)]
    return [entry.name]


def _file_digest(fr: FileResult, manifest: Manifest) -> str:
    ser = manifest.serialization
    if ser.method == "files":
        return f"{ser.hash_type}:{fr.resources[0].digest.hex()}"
    h = hashlib.sha256()
    for r in fr.resources:
        h.update(r.digest)
    return f"{ser.resource_algorithm}:{h.hexdigest()}"


def _same(a: Manifest, b: Manifest) -> bool:
    return a.serialization == b.serialization and a.digests() == b.digests()


def verify(
    path: str | os.PathLike[str],
    *,
    policy: Any = None,
    signature: str | os.PathLike[str] | None = None,
    signatures: Sequence[str | os.PathLike[str]] = (),
    signers: Sequence[Any] | None = None,
    ignore_paths: Iterable[str | os.PathLike[str]] = (),
    keep_bytes: bool = True,
    unsafe_mmap: bool = False,
    trust_config: str | os.PathLike[str] | None = None,
    offline: bool = True,
    allow_ca_leaf: bool | None = None,
    min_signers: int | None = None,
    progress: Progress | None = None,
    workers: int | None = None,
) -> VerifiedModel:
    """Verify the model folder ``path`` (or a cached HF ``org/name@rev``); raise on any failure.

    ``policy`` is a ``Policy``, a policy file path, or ``None`` for the effective policy.
    ``signers`` replaces the policy's ``trust.signers`` (the CLI's ``--key``/``--identity``).
    ``signature`` defaults to ``<path>/model.sig``; ``signatures`` adds more ``.sig`` files,
    each checked independently, and ``trust.min_signers`` distinct signers must verify.
    ``keep_bytes`` reads each file once into private memory (the default, and what makes
    ``safeload.load(verified.files[name])`` safe); ``unsafe_mmap`` maps the files instead and
    trusts nobody writes them afterwards; it is refused unless the policy allows it.
    """
    settings = settings_from_policy(policy).with_overrides(
        allow_ca_leaf=allow_ca_leaf, min_signers=min_signers,
        trust_config=None if trust_config is None else Path(trust_config),
    )
    root = _resolve_root(path, settings)
    if signers is not None:  # the caller's list is the whole requirement: one group
        settings = settings.with_overrides(signers=tuple(signers), groups=())
    if not settings.signers:
        raise VerificationError("no trusted signers: nothing can verify", rule="trust.signers",
                                detail="name a key, CA or identity, or set trust.signers")
    keep: Keep = "copy" if keep_bytes else "none"
    if unsafe_mmap:
        if not settings.allow_unsafe_mmap:
            raise UsageError("unsafe_mmap is refused by the policy", rule="trust.allow_unsafe_mmap",
                             detail="mapped files can change after verification")
        keep = "mmap"
        from safeload.policy import audit_unsafe_option

        audit_unsafe_option("unsafe_mmap", "verified files are mapped, not copied: an in-place "
                            "write after verification changes what is loaded", path=str(root),
                            policy=settings.policy)
    sig_paths = [Path(signature) if signature is not None else root / "model.sig"]
    sig_paths += [Path(s) for s in signatures]

    verified: list[tuple[VerifiedSigner, Manifest]] = [
        _verify_signature_file(p, settings, offline=offline) for p in sig_paths]
    manifest = verified[0][1]
    for p, (_, other) in zip(sig_paths[1:], verified[1:], strict=True):
        if not _same(manifest, other):
            raise VerificationError("signatures disagree about the model's contents", path=str(p),
                                    rule="trust.min_signers")
    distinct = {w.description: w for w, _ in reversed(verified)}  # first occurrence wins
    who = tuple(dict.fromkeys(w.description for w, _ in verified))
    record = VerificationRecord(signers=tuple(distinct[d] for d in who),
                                model_digest="sha256:" + manifest.root_digest.hex())
    if len(who) < settings.min_signers:
        raise VerificationError(
            f"{len(who)} distinct trusted signer(s), policy requires {settings.min_signers}",
            rule="trust.min_signers", detail=", ".join(who))
    _check_requirements(sig_paths, who, settings, offline=offline)

    real_root = root.resolve()
    sig_names = [p.resolve().relative_to(real_root).as_posix() for p in sig_paths
                 if p.resolve().is_relative_to(real_root)]
    verifier_ignore = [*settings.ignore_paths, *relative_ignore_paths(root, ignore_paths)]
    is_sig = path_matcher(sig_names)
    is_verifier_ignored = path_matcher(verifier_ignore)
    verifier_ignored: list[str] = []

    def exclude(name: str) -> bool:
        if is_sig(name):
            return True
        if is_verifier_ignored(name):
            verifier_ignored.append(name)
            return True
        return False

    entries = list_model_files(root, allow_symlinks=settings.allow_symlinks, exclude=exclude)
    signed_files = manifest.file_names()
    is_signer_ignored = path_matcher(manifest.serialization.ignore_paths)
    signer_ignored = [e.name for e in entries
                      if e.name not in signed_files and is_signer_ignored(e.name)]
    entries = [e for e in entries if e.name not in signer_ignored]
    _check_names(entries, manifest, root)
    results = hash_entries(entries, serialization=manifest.serialization, keep=keep,
                           workers=workers, progress=progress,
                           max_file_bytes=settings.max_file_bytes,
                           max_total_bytes=settings.max_total_bytes)
    expected = manifest.digests()
    bad = [r.name for fr in results.values() for r in fr.resources
           if expected.get(r.name) != r.digest]
    if bad:
        files = sorted({split_shard_name(n)[0] if manifest.serialization.method == "shards"
                        else n for n in bad})
        raise VerificationError("file content does not match the signature", path=str(root),
                                rule="oms.digest", detail="changed: " + ", ".join(files))
    verified_files = {
        name: VerifiedFile(name, fr.path, _file_digest(fr, manifest), fr.data, fr.size,
                           None if fr.owner is None else _Owned(fr.owner), record)
        for name, fr in sorted(results.items())}
    model = VerifiedModel(
        root=str(root), files=MappingProxyType(verified_files), signers=who,
        model_digest=record.model_digest,
        serialization=manifest.serialization, signer_ignored=tuple(signer_ignored),
        verifier_ignored=tuple(verifier_ignored), unsafe_mmap=keep == "mmap", record=record,
    )
    _check_pins(model, settings, manifest)
    if signer_ignored:
        logger.info("files left out by the signer's ignore_paths (not verified): %s",
                    ", ".join(signer_ignored))
    return model


def _check_requirements(sig_paths: Sequence[Path], who: tuple[str, ...],
                        settings: TrustSettings, *, offline: bool) -> None:
    """Every signer group must hold on its own: layered policies are a conjunction.

    Each signature already verified against the union of trusted signers; here it is checked
    again against each group's own list, so a signer only counts for the groups that list it.
    A team key added under an org baseline therefore satisfies the team's group, never the
    org's. Signatures only: no file is read or hashed again.
    """
    for group in settings.requirements():
        if group.signers == settings.signers:
            counted = who
        else:
            narrowed = replace(settings, signers=group.signers, groups=())
            found: list[str] = []
            for p in sig_paths:
                try:
                    found.append(verify_signature_file(p, narrowed, offline=offline)[0])
                except VerificationError:
                    continue  # verified, but by a signer this group does not list
            counted = tuple(dict.fromkeys(found))
        if len(counted) < group.min_signers:
            where = group.source or "the policy"
            raise VerificationError(
                f"signer requirement from {where} not met: {len(counted)} of its signer(s) "
                f"verified, {group.min_signers} required",
                rule="trust.requirements",
                detail=f"verified: {', '.join(who) or 'none'}; counted for this group: "
                       f"{', '.join(counted) or 'none'}",
            )


def _check_names(entries: list[ModelEntry], manifest: Manifest, root: Path) -> None:
    present = {e.name for e in entries}
    signed = manifest.file_names()
    extra, missing = sorted(present - signed), sorted(signed - present)
    if extra or missing:
        parts = []
        if extra:
            parts.append("not signed: " + ", ".join(extra))
        if missing:
            parts.append("missing: " + ", ".join(missing))
        raise VerificationError("model folder does not match the signed file list",
                                path=str(root), rule="oms.files", detail="; ".join(parts))
    expected = set(manifest.digests())
    for e in entries:
        if any(n not in expected for n in _expected_names(e, manifest)):
            raise VerificationError("file size does not match the signed shards", path=e.name,
                                    rule="oms.digest")


def _check_pins(model: VerifiedModel, settings: TrustSettings, manifest: Manifest) -> None:
    for name, pin in settings.pinned_digests.items():
        algo, _, want = pin.partition(":")
        if algo != "sha256":
            raise UsageError(f"pinned digest for {name!r} is not sha256:<hex>",
                             rule="trust.pinned_digests")
        if name == "model":
            got = manifest.root_digest.hex()
        else:
            vf = model.files.get(name)
            if vf is None:
                raise VerificationError("pinned file is not part of the verified model",
                                        path=name, rule="trust.pinned_digests")
            if vf.digest.startswith("sha256:"):
                got = vf.digest.partition(":")[2]
            else:
                got = _sha256_file(vf)
        if got != want.lower():
            raise VerificationError("digest does not match its pin", path=name,
                                    rule="trust.pinned_digests", detail=f"got sha256:{got}")


def _sha256_file(vf: VerifiedFile) -> str:
    if vf.data is not None:
        return hashlib.sha256(vf.data).hexdigest()
    h = hashlib.sha256()
    with open(vf.path, "rb") as fh:  # noqa: PTH123 - streaming read with a fixed buffer
        while chunk := fh.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()
