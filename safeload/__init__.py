"""safeload: load ML models as verified, data-only operations.

The public face. Implementation lives in private modules under one folder per capability
(``source``, ``signing``, ``formats``, ``policy``, ``sandbox``, ``convert``, ``integrations``);
everything a user may rely on is re-exported here and listed in ``__all__``. Importing
safeload never imports torch, onnx or sigstore: those load on first use.
"""

from __future__ import annotations

import logging

from safeload.errors import (
    FormatError,
    LimitExceededError,
    PolicyError,
    PolicyViolation,
    RefusedError,
    SafeloadError,
    SandboxError,
    SourceError,
    UnsafeModelError,
    UnsupportedFormatError,
    UsageError,
    VerificationError,
)
from safeload.policy import Limits

# isort: split
# --- core readers (issue 2) ---
from safeload.formats._safe_globals import (
    add_safe_globals,
    clear_safe_globals,
    get_safe_globals,
    safe_globals,
)
from safeload.integrations._load import ModelInfo, get_unsafe_globals, inspect, load
from safeload.integrations._scan import FileResult, ScanReport, scan

# --- policy (issue 3) ---
from safeload.policy import Policy, effective_policy, load_policy

# --- signing (issue 4) ---
from safeload.signing import VerifiedFile, VerifiedModel, hash_model, sign, verify

# isort: split
# --- sandbox (issue 5) ---
from safeload.sandbox import LAYERS as SANDBOX_LAYERS
from safeload.sandbox import (
    DoctorReport,
    LayerReport,
    SandboxResult,
    doctor,
    run_in_sandbox,
    sandboxed_read,
)

# isort: split
# --- drop-in loaders ---
from safeload.integrations._patch import is_patched, patch, patched, unpatch
from safeload.integrations._pretrained import PretrainedState, from_pretrained

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "SANDBOX_LAYERS",
    "DoctorReport",
    "FileResult",
    "FormatError",
    "LayerReport",
    "LimitExceededError",
    "Limits",
    "ModelInfo",
    "Policy",
    "PolicyError",
    "PolicyViolation",
    "PretrainedState",
    "RefusedError",
    "SafeloadError",
    "SandboxError",
    "SandboxResult",
    "ScanReport",
    "SourceError",
    "UnsafeModelError",
    "UnsupportedFormatError",
    "UsageError",
    "VerificationError",
    "VerifiedFile",
    "VerifiedModel",
    "__version__",
    "add_safe_globals",
    "clear_safe_globals",
    "doctor",
    "effective_policy",
    "from_pretrained",
    "get_safe_globals",
    "get_unsafe_globals",
    "hash_model",
    "inspect",
    "is_patched",
    "load",
    "load_policy",
    "patch",
    "patched",
    "run_in_sandbox",
    "safe_globals",
    "sandboxed_read",
    "scan",
    "sign",
    "unpatch",
    "verify",
]
