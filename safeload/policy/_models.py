"""The policy document: one frozen, validated value that every loading decision reads.

Why pydantic models with ``extra="forbid"``: a typo in a security policy (``require_signatures``)
must be an error, not a silently ignored key that leaves the model unsigned. Every field carries
a docstring so ``safeload policy schema`` documents itself. Paths inside a policy (keys, CA
chains, trust config, audit log) are resolved against the policy file's folder when the loader
passes ``{"base_dir": ...}`` as validation context, so a policy means the same thing wherever the
process happens to run.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from safeload.policy._limits import Limits

__all__ = [
    "POLICY_VERSION",
    "CertificateSigner",
    "ExtraGlobal",
    "FormatName",
    "FormatsPolicy",
    "KeySigner",
    "OnnxPolicy",
    "PicklePolicy",
    "Policy",
    "SandboxLayer",
    "SandboxPolicy",
    "Signer",
    "SignerGroup",
    "SigstoreSigner",
    "SourcesPolicy",
    "TrustPolicy",
]

POLICY_VERSION = 1
"""The only policy schema version this safeload understands."""

_GiB = 1 << 30

FormatName = Literal[
    "safetensors",
    "torch_zip",
    "torch_legacy",
    "torch_tar",
    "pickle",
    "numpy",
    "npz",
    "onnx",
    "gguf",
    "joblib",
    "keras",
    "hdf5",
    "torchscript",
]
SandboxLayer = Literal["rlimits", "no_new_privs", "namespaces", "landlock", "seccomp"]

_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_PEM_MARK = "-----BEGIN "
_CONFIG = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


def _resolve_path(value: str, info: ValidationInfo) -> str:
    """Anchor a relative path at the policy file's folder (when loaded from a file)."""
    base = info.context.get("base_dir") if isinstance(info.context, dict) else None
    if base is None or value.lstrip().startswith(_PEM_MARK):
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else Path(base) / path)


def _check_anchored_regex(pattern: str) -> str:
    """Refuse regexes that would match a prefix or suffix of an identity by accident."""
    if not (pattern.startswith("^") and pattern.endswith("$")) or pattern.endswith("\\$"):
        raise ValueError(f"regex {pattern!r} must be anchored: start with '^' and end with '$'")
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"regex {pattern!r} does not compile: {exc}") from None
    return pattern


class FormatsPolicy(BaseModel):
    """Which file formats may be read at all (an allowlist of safe reader names)."""

    model_config = _CONFIG

    allowed: tuple[FormatName, ...] = (
        "safetensors",
        "torch_zip",
        "torch_legacy",
        "torch_tar",
        "numpy",
        "npz",
        "onnx",
    )
    """Format names that may be loaded; raw "pickle" is never on by default."""


class SigstoreSigner(BaseModel):
    """A keyless Sigstore identity (OIDC subject + issuer) trusted to sign models."""

    model_config = _CONFIG

    method: Literal["sigstore"] = "sigstore"
    """Signing method discriminator."""

    identity: str | None = None
    """Exact certificate identity (email or URI SAN); give this or identity_regex."""

    identity_regex: str | None = None
    """Anchored regex (^...$) the certificate identity must fully match."""

    issuer: str = Field(min_length=1)
    """OIDC issuer URL that must appear in the signing certificate."""

    @field_validator("identity_regex")
    @classmethod
    def _regex_ok(cls, value: str | None) -> str | None:
        return None if value is None else _check_anchored_regex(value)

    @model_validator(mode="after")
    def _one_identity(self) -> SigstoreSigner:
        if (self.identity is None) == (self.identity_regex is None):
            raise ValueError("give exactly one of identity or identity_regex")
        if self.identity is not None and not self.identity:
            raise ValueError("identity must not be empty")
        return self


class KeySigner(BaseModel):
    """A raw public key (PEM) trusted to sign models."""

    model_config = _CONFIG

    method: Literal["key"] = "key"
    """Signing method discriminator."""

    public_key: str = Field(min_length=1)
    """Path to a PEM public key (relative to the policy file) or the inline PEM text."""

    @field_validator("public_key")
    @classmethod
    def _resolve_key(cls, value: str, info: ValidationInfo) -> str:
        return _resolve_path(value, info)

    def pem_bytes(self) -> bytes:
        """The PEM bytes, whether the policy inlined them or named a file."""
        return _read_pem(self.public_key, "trust.signers.public_key")


class CertificateSigner(BaseModel):
    """A private PKI: leaf certificates chaining to the given anchors are trusted."""

    model_config = _CONFIG

    method: Literal["certificate"] = "certificate"
    """Signing method discriminator."""

    ca_chain: str = Field(min_length=1)
    """Trust anchors: path to a PEM bundle (relative to the policy file) or inline PEM."""

    identity: str | None = None
    """Optional SAN (email/URI/DNS) or subject CN the leaf certificate must carry."""

    @field_validator("ca_chain")
    @classmethod
    def _resolve_ca(cls, value: str, info: ValidationInfo) -> str:
        return _resolve_path(value, info)

    def pem_bytes(self) -> bytes:
        """The CA bundle bytes, whether inlined or named by path."""
        return _read_pem(self.ca_chain, "trust.signers.ca_chain")


def _read_pem(value: str, rule: str) -> bytes:
    from safeload.errors import PolicyError

    if value.lstrip().startswith(_PEM_MARK):
        return value.encode()
    try:
        return Path(value).read_bytes()
    except OSError as exc:
        raise PolicyError(
            "cannot read PEM file named by the policy", path=value, rule=rule, detail=str(exc)
        ) from None


Signer = Annotated[SigstoreSigner | KeySigner | CertificateSigner, Field(discriminator="method")]


class SignerGroup(BaseModel):
    """One layer's signer requirement: ``min_signers`` distinct signers of ``signers`` verified.

    Why groups: layered policies are a conjunction. An org baseline trusting identity A and a
    team policy adding key K mean "A *and* K", never "A or K"; a flat, accumulated signer list
    with one count would let the team's key alone satisfy the org (a widening).
    """

    model_config = _CONFIG

    signers: tuple[Signer, ...] = Field(min_length=1)
    """The signers this layer listed (inherited ones belong to the parent's own group)."""

    min_signers: int = Field(default=1, ge=1)
    """Distinct signers of this group that must verify."""

    source: str = ""
    """The policy file this requirement came from (shown by ``safeload policy show``)."""

    @model_validator(mode="after")
    def _satisfiable(self) -> SignerGroup:
        if self.min_signers > len(self.signers):
            raise ValueError(
                f"min_signers {self.min_signers} exceeds the group's {len(self.signers)} signers"
            )
        return self


class TrustPolicy(BaseModel):
    """Who must have signed a model, and how signatures are checked."""

    model_config = _CONFIG

    require_signature: bool = False
    """Refuse any model without a valid signature from a trusted signer."""

    min_signers: int = Field(default=1, ge=1)
    """How many distinct trusted signers must have signed the same model."""

    allow_ca_leaf: bool = False
    """Accept a signature whose leaf certificate is itself a CA (usually a misissued cert)."""

    trust_config: str | None = None
    """Sigstore ClientTrustConfig JSON (path); unset means sigstore's embedded production root."""

    ignore_paths: tuple[str, ...] = ()
    """Files (relative to the model folder) the verifier skips; signer-side lists do not count."""

    allow_symlinks: bool = False
    """Follow symlinks in the model folder; even then only links staying inside it."""

    allow_unsafe_mmap: bool = False
    """Let callers pass unsafe_mmap=True (verified files mapped, not copied; each use audited)."""

    signers: tuple[Signer, ...] = ()
    """Trusted signers (sigstore identities, public keys, private CAs)."""

    pinned_digests: dict[str, str] = Field(default_factory=dict)
    """Name -> "sha256:<hex>": a whole model (OMS subject) or a single file must hash to this."""

    requirements: tuple[SignerGroup, ...] = ()
    """Every layer's signer group, all required. Computed by extends; files need not write it
    (an exported effective policy carries it, and written groups only add requirements)."""

    def signer_groups(self) -> tuple[SignerGroup, ...]:
        """The requirements verification enforces, each one independently.

        A policy built in Python (or a single file) may leave ``requirements`` empty: its one
        group is then ``signers`` with ``min_signers``, which is exactly the flat rule.
        """
        if self.requirements:
            return self.requirements
        if not self.signers:
            return ()
        return (SignerGroup(signers=self.signers, min_signers=min(self.min_signers,
                                                                  len(self.signers))),)

    @field_validator("trust_config")
    @classmethod
    def _resolve_config(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else _resolve_path(value, info)

    @field_validator("pinned_digests")
    @classmethod
    def _digests_ok(cls, value: dict[str, str]) -> dict[str, str]:
        for name, digest in value.items():
            if not name:
                raise ValueError("a pinned digest needs a non-empty name")
            if not _DIGEST_RE.match(digest):
                raise ValueError(
                    f"pinned digest for {name!r} must be 'sha256:' + 64 lowercase hex digits"
                )
        return value

    @field_validator("ignore_paths")
    @classmethod
    def _relative_only(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            if not item or Path(item).is_absolute() or ".." in Path(item).parts:
                raise ValueError(f"ignore path {item!r} must be relative, inside the model folder")
        return value


class SourcesPolicy(BaseModel):
    """Where models may come from (Hugging Face repositories) and how precisely pinned."""

    model_config = _CONFIG

    allowed_repos: tuple[str, ...] | None = None
    """Repo ids or globs ("org/*"); unset means any repo, [] means none."""

    require_revision: bool = False
    """Require a full 40-hex commit revision, never a branch or tag that can move."""

    @field_validator("allowed_repos")
    @classmethod
    def _repo_shape(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for item in value or ():
            if item.count("/") != 1 or not all(item.split("/")):
                raise ValueError(f"repo pattern {item!r} must look like 'org/name' or 'org/*'")
        return value


class ExtraGlobal(BaseModel):
    """One extra pickle global a user vouches for, with the reason it is safe."""

    model_config = _CONFIG

    name: str = Field(pattern=r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+$")
    """Fully qualified "module.qualname" of the class."""

    reason: str = Field(min_length=1)
    """Why constructing this class from file data runs no harmful code."""


class PicklePolicy(BaseModel):
    """What the allowlist-only pickle reader may build beyond its built-in table."""

    model_config = _CONFIG

    extra_globals: tuple[ExtraGlobal, ...] = ()
    """Extra globals; honoured only for classes also registered with safeload.add_safe_globals."""


class OnnxPolicy(BaseModel):
    """Which ONNX graphs may be loaded and run."""

    model_config = _CONFIG

    allowed_domains: tuple[str, ...] = ("", "ai.onnx", "ai.onnx.ml")
    """Operator domains allowed; custom domains mean custom (native) kernels."""

    allowed_ops: tuple[str, ...] = ()
    """Allowed op types; empty means every standard op of the allowed domains."""

    denied_ops: tuple[str, ...] = ()
    """Op types refused even when their domain is allowed."""

    opset_min: int = Field(default=7, ge=1)
    """Lowest accepted opset version."""

    opset_max: int = Field(default=23, ge=1)
    """Highest accepted opset version."""

    external_data: Literal["forbid", "inside_model_dir"] = "inside_model_dir"
    """Tensors stored in side files: refused, or only inside the model folder."""

    max_nodes: int = Field(default=100_000, ge=0)
    """Most graph nodes (including subgraphs)."""

    max_initializer_bytes: int = Field(default=16 * _GiB, ge=0)
    """Largest total size of initializers, in bytes."""

    run_timeout_seconds: float = Field(default=60, gt=0)
    """Longest one inference call (``onnx_session``'s ``run``) may take before it is stopped."""

    @model_validator(mode="after")
    def _opset_range(self) -> OnnxPolicy:
        if self.opset_min > self.opset_max:
            raise ValueError(f"opset_min {self.opset_min} exceeds opset_max {self.opset_max}")
        return self


class SandboxPolicy(BaseModel):
    """When untrusted parsing moves into the sandboxed worker, and what it must have."""

    model_config = _CONFIG

    mode: Literal["always", "untrusted", "never"] = "never"
    """always; untrusted (anything not verified by a trusted signer); or never."""

    required_layers: tuple[SandboxLayer, ...] = ()
    """Isolation layers that must be active, or loading fails."""


class Policy(BaseModel):
    """The whole policy: one document, layered with extends, deciding every load."""

    model_config = _CONFIG

    version: Literal[1] = 1
    """Policy schema version; must be 1."""

    mode: Literal["enforce", "audit"] = "enforce"
    """enforce refuses violations; audit allows them and records each one."""

    audit_log: str | None = None
    """Optional JSON-lines file every decision is appended to (path)."""

    extends: tuple[str, ...] = ()
    """Parent policies (paths relative to this file); a child may only tighten them."""

    formats: FormatsPolicy = Field(default_factory=FormatsPolicy)
    """Format allowlist."""

    trust: TrustPolicy = Field(default_factory=TrustPolicy)
    """Signatures, signers and pinned digests."""

    sources: SourcesPolicy = Field(default_factory=SourcesPolicy)
    """Allowed model sources."""

    limits: Limits = Field(default_factory=Limits)
    """Resource limits every reader enforces."""

    pickle: PicklePolicy = Field(default_factory=PicklePolicy)
    """Pickle reader extensions."""

    onnx: OnnxPolicy = Field(default_factory=OnnxPolicy)
    """ONNX graph rules."""

    sandbox: SandboxPolicy = Field(default_factory=SandboxPolicy)
    """Sandbox use."""

    # Set by the loader: which file set each leaf, and the files merged (see ``policy show``).
    _provenance: dict[str, str] = PrivateAttr(default_factory=dict)
    _files: tuple[str, ...] = PrivateAttr(default=())

    @field_validator("audit_log")
    @classmethod
    def _resolve_log(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else _resolve_path(value, info)

    def canonical_json(self) -> str:
        """Stable JSON of this policy (sorted keys, no spaces): what the audit digest covers."""
        import json

        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def digest(self) -> str:
        """``sha256:<hex>`` of :meth:`canonical_json`, recorded in every audit line."""
        import hashlib

        return "sha256:" + hashlib.sha256(self.canonical_json().encode()).hexdigest()
