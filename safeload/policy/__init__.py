"""Policy: the single validated model behind every loading decision.

``Policy`` is the document (TOML/JSON/YAML, frozen pydantic), ``load_policy`` reads one file with
its ``extends`` chain (tighten-only), and ``effective_policy`` finds the one that applies.
"""

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
    SigstoreSigner,
    SourcesPolicy,
    TrustPolicy,
)

__all__ = [
    "POLICY_VERSION",
    "CertificateSigner",
    "ExtraGlobal",
    "FormatName",
    "FormatsPolicy",
    "KeySigner",
    "Limits",
    "OnnxPolicy",
    "PicklePolicy",
    "Policy",
    "SandboxPolicy",
    "Signer",
    "SigstoreSigner",
    "SourcesPolicy",
    "TrustPolicy",
    "effective_policy",
    "load_policy",
    "policy_files",
    "provenance",
]
