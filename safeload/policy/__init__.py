"""Policy: the single validated model behind every loading decision.

``Policy`` is the document (TOML/JSON/YAML, frozen pydantic), ``load_policy`` reads one file with
its ``extends`` chain (tighten-only), and ``effective_policy`` finds the one that applies.
"""

from safeload.policy._apply import select_extra_globals, tighter_limits
from safeload.policy._audit import AUDIT_LOGGER_NAME, audit, audit_event, audit_unsafe_option
from safeload.policy._decide import Candidate, Decision, RuleHit, decide, enforce, needs_sandbox
from safeload.policy._gate import PolicyGate, policy_gate
from safeload.policy._limits import Limits
from safeload.policy._load import effective_policy, load_policy, policy_files, provenance
from safeload.policy._models import (
    POLICY_VERSION,
    CertificateSigner,
    ExtraGlobal,
    FormatName,
    FormatsPolicy,
    KeySigner,
    OnnxPolicy,
    PicklePolicy,
    Policy,
    SandboxPolicy,
    Signer,
    SignerGroup,
    SigstoreSigner,
    SourcesPolicy,
    TrustPolicy,
)

__all__ = [
    "AUDIT_LOGGER_NAME",
    "POLICY_VERSION",
    "Candidate",
    "CertificateSigner",
    "Decision",
    "ExtraGlobal",
    "FormatName",
    "FormatsPolicy",
    "KeySigner",
    "Limits",
    "OnnxPolicy",
    "PicklePolicy",
    "Policy",
    "PolicyGate",
    "RuleHit",
    "SandboxPolicy",
    "Signer",
    "SignerGroup",
    "SigstoreSigner",
    "SourcesPolicy",
    "TrustPolicy",
    "audit",
    "audit_event",
    "audit_unsafe_option",
    "decide",
    "effective_policy",
    "enforce",
    "load_policy",
    "needs_sandbox",
    "policy_files",
    "policy_gate",
    "provenance",
    "select_extra_globals",
    "tighter_limits",
]
