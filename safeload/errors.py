"""The one exception tree every safeload failure belongs to.

Callers catch :class:`SafeloadError` and nothing else; the CLI does exactly that, so a user
never sees a bare traceback. Each error says *what* was refused (``path``, ``offset``),
*which rule* refused it (``rule``, a policy field path such as ``limits.max_pickle_opcodes``
or a reader rule such as ``pickle.globals``) and *why* (``detail``), and renders that as one
human paragraph with :meth:`SafeloadError.diagnostics`.

::

    SafeloadError                 base; exit code 2 (an error, not a verdict on the model)
    +-- UsageError                a caller asked for something unsafe or contradictory
    +-- SourceError               a path is missing, escapes its model folder, or is a bad link
    +-- PolicyError               a policy file is malformed, or a child policy loosens its parent
    +-- SandboxError              the worker could not be started or a mandatory layer is missing
    +-- ConversionError           a model that was read cannot be written or checked as the target
    +-- RefusedError              the *model* was refused; exit code 1
        +-- FormatError           bytes are malformed, truncated, or not what they claim to be
        |   +-- UnsupportedFormatError   a known format safeload will not read (by name)
        +-- UnsafeModelError      the file asks for code: a non-allowlisted global, opcode, ...
        +-- LimitExceededError    a resource limit was hit (pickle bombs, huge tensors, ...)
        +-- PolicyViolation       the policy's decision was "refuse"
        +-- VerificationError     a signature, certificate, identity or digest did not check out

Every class carries a stable ``code`` (``SL...``) used as the SARIF rule id.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "ConversionError",
    "FormatError",
    "LimitExceededError",
    "PolicyError",
    "PolicyViolation",
    "RefusedError",
    "SafeloadError",
    "SandboxError",
    "SourceError",
    "UnsafeModelError",
    "UnsupportedFormatError",
    "UsageError",
    "VerificationError",
]


class SafeloadError(Exception):
    """Base of every error safeload raises on purpose.

    ``message`` is the short headline; the structured fields let tools (SARIF, JSON output,
    the audit log) report the failure without parsing text.
    """

    code: ClassVar[str] = "SL000"
    stage: ClassVar[str] = "safeload"
    exit_code: ClassVar[int] = 2

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        rule: str | None = None,
        offset: int | None = None,
        detail: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.path = None if path is None else str(path)
        self.rule = rule
        self.offset = offset
        self.detail = detail
        if code is not None:
            # A finer-grained rule id (e.g. SL101 for a refused global) within the class's family.
            self.code = code  # type: ignore[misc]

    def with_path(self, path: str) -> SafeloadError:
        """Fill in the path when a lower layer raised without knowing which file it was reading."""
        if self.path is None:
            self.path = str(path)
        return self

    def diagnostics(self) -> str:
        """One human paragraph: what, where, which rule, why."""
        parts = [f"{self.message}"]
        where = []
        if self.path is not None:
            where.append(self.path)
        if self.offset is not None:
            where.append(f"byte offset {self.offset}")
        if where:
            parts.append(f"(in {', at '.join(where)})")
        if self.rule is not None:
            parts.append(f"[rule: {self.rule}]")
        text = " ".join(parts)
        if self.detail:
            text += f". {self.detail}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "error": type(self).__name__,
            "code": self.code,
            "stage": self.stage,
            "message": self.message,
            "path": self.path,
            "rule": self.rule,
            "offset": self.offset,
            "detail": self.detail,
        }

    def __str__(self) -> str:
        return self.diagnostics()


class UsageError(SafeloadError):
    """The caller asked for something safeload will not do (``weights_only=False``, ...)."""

    code = "SL010"
    stage = "usage"


class SourceError(SafeloadError):
    """A model path is missing, unreadable, escapes its folder, or follows a forbidden link."""

    code = "SL700"
    stage = "source"


class PolicyError(SafeloadError):
    """A policy document is invalid, or a layered policy tries to loosen its parent."""

    code = "SL410"
    stage = "policy"


class SandboxError(SafeloadError):
    """The sandbox worker failed, died, or a mandatory isolation layer is unavailable."""

    code = "SL600"
    stage = "sandbox"


class ConversionError(SafeloadError):
    """A conversion could not produce a checked output (a value with no safetensors form, an
    output that exists, a read-back that differs). The input was read fine, so this is an
    error of the conversion, not a verdict on the model; no output file is left behind."""

    code = "SL800"
    stage = "convert"


class RefusedError(SafeloadError):
    """The model itself was refused: a verdict, not an operational failure."""

    code = "SL100"
    stage = "read"
    exit_code = 1


class FormatError(RefusedError):
    """Bytes are malformed, truncated or inconsistent; fail closed rather than guess."""

    code = "SL200"
    stage = "detect"


class UnsupportedFormatError(FormatError):
    """A format safeload recognises but will not read safely (GGUF, joblib, Keras, ...)."""

    code = "SL201"


class UnsafeModelError(RefusedError):
    """The file asks for code to run: a global, opcode or construct outside the allowlist."""

    code = "SL101"


class LimitExceededError(RefusedError):
    """A resource limit from the policy was reached; refusing before memory or time runs out."""

    code = "SL300"


class PolicyViolation(RefusedError):  # noqa: N818 - the name the issue and users expect
    """The effective policy decided to refuse this model."""

    code = "SL400"
    stage = "decide"


class VerificationError(RefusedError):
    """A signature, certificate chain, signer identity or pinned digest failed to verify."""

    code = "SL500"
    stage = "verify"
