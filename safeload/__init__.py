"""safeload: load ML models as verified, data-only operations.

The public face. Implementation lives in private modules under one folder per capability
(``source``, ``signing``, ``formats``, ``policy``, ``sandbox``, ``convert``, ``integrations``);
everything a user may rely on is re-exported here and listed in ``__all__``. Importing
safeload never imports torch, onnx or sigstore: those load on first use.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from safeload.errors import (
    ConversionError,
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

# Everything below errors is imported on first use (PEP 562), so `import safeload` stays cheap
# (no pydantic, numpy, cryptography or sigstore until needed) and the sandbox worker imports only
# what it runs. The TYPE_CHECKING block gives type checkers and IDEs the real names.
if TYPE_CHECKING:
    from safeload.convert import ConversionReport, to_safetensors
    from safeload.formats._safe_globals import (
        add_safe_globals,
        clear_safe_globals,
        get_safe_globals,
        safe_globals,
    )
    from safeload.integrations._load import ModelInfo, get_unsafe_globals, inspect, load
    from safeload.integrations._onnx_check import OnnxGraphInfo, check_onnx_graph
    from safeload.integrations._onnx_session import GuardedSession, onnx_session
    from safeload.integrations._patch import is_patched, patch, patched, unpatch
    from safeload.integrations._pretrained import PretrainedState, from_pretrained
    from safeload.integrations._scan import FileResult, ScanReport, scan
    from safeload.policy import Limits, Policy, effective_policy, load_policy
    from safeload.sandbox import LAYERS as SANDBOX_LAYERS
    from safeload.sandbox import (
        DoctorReport,
        LayerReport,
        SandboxResult,
        doctor,
        run_in_sandbox,
        sandboxed_read,
    )
    from safeload.signing import VerifiedFile, VerifiedModel, hash_model, sign, verify

_LAZY: dict[str, tuple[str, str]] = {
    "ConversionReport": ("safeload.convert", "ConversionReport"),
    "DoctorReport": ("safeload.sandbox", "DoctorReport"),
    "FileResult": ("safeload.integrations._scan", "FileResult"),
    "GuardedSession": ("safeload.integrations._onnx_session", "GuardedSession"),
    "LayerReport": ("safeload.sandbox", "LayerReport"),
    "Limits": ("safeload.policy", "Limits"),
    "ModelInfo": ("safeload.integrations._load", "ModelInfo"),
    "OnnxGraphInfo": ("safeload.integrations._onnx_check", "OnnxGraphInfo"),
    "Policy": ("safeload.policy", "Policy"),
    "PretrainedState": ("safeload.integrations._pretrained", "PretrainedState"),
    "SANDBOX_LAYERS": ("safeload.sandbox", "LAYERS"),
    "SandboxResult": ("safeload.sandbox", "SandboxResult"),
    "ScanReport": ("safeload.integrations._scan", "ScanReport"),
    "VerifiedFile": ("safeload.signing", "VerifiedFile"),
    "VerifiedModel": ("safeload.signing", "VerifiedModel"),
    "add_safe_globals": ("safeload.formats._safe_globals", "add_safe_globals"),
    "check_onnx_graph": ("safeload.integrations._onnx_check", "check_onnx_graph"),
    "clear_safe_globals": ("safeload.formats._safe_globals", "clear_safe_globals"),
    "doctor": ("safeload.sandbox", "doctor"),
    "effective_policy": ("safeload.policy", "effective_policy"),
    "from_pretrained": ("safeload.integrations._pretrained", "from_pretrained"),
    "get_safe_globals": ("safeload.formats._safe_globals", "get_safe_globals"),
    "get_unsafe_globals": ("safeload.integrations._load", "get_unsafe_globals"),
    "hash_model": ("safeload.signing", "hash_model"),
    "inspect": ("safeload.integrations._load", "inspect"),
    "is_patched": ("safeload.integrations._patch", "is_patched"),
    "load": ("safeload.integrations._load", "load"),
    "load_policy": ("safeload.policy", "load_policy"),
    "onnx_session": ("safeload.integrations._onnx_session", "onnx_session"),
    "patch": ("safeload.integrations._patch", "patch"),
    "patched": ("safeload.integrations._patch", "patched"),
    "run_in_sandbox": ("safeload.sandbox", "run_in_sandbox"),
    "safe_globals": ("safeload.formats._safe_globals", "safe_globals"),
    "sandboxed_read": ("safeload.sandbox", "sandboxed_read"),
    "scan": ("safeload.integrations._scan", "scan"),
    "sign": ("safeload.signing", "sign"),
    "to_safetensors": ("safeload.convert", "to_safetensors"),
    "unpatch": ("safeload.integrations._patch", "unpatch"),
    "verify": ("safeload.signing", "verify"),
}


def __getattr__(name: str) -> Any:
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'safeload' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module_name), attr)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "SANDBOX_LAYERS",
    "ConversionError",
    "ConversionReport",
    "DoctorReport",
    "FileResult",
    "FormatError",
    "GuardedSession",
    "LayerReport",
    "LimitExceededError",
    "Limits",
    "ModelInfo",
    "OnnxGraphInfo",
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
    "check_onnx_graph",
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
    "onnx_session",
    "patch",
    "patched",
    "run_in_sandbox",
    "safe_globals",
    "sandboxed_read",
    "scan",
    "sign",
    "to_safetensors",
    "unpatch",
    "verify",
]
