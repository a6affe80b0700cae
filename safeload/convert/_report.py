"""What a conversion did, for the caller, the CLI's JSON output and the audit log."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = ["ConversionReport"]


@dataclass(frozen=True, slots=True)
class ConversionReport:
    """One finished conversion: every field is a fact that was checked, not a request.

    A report exists only after the output was written *and* read back and compared; a
    conversion that could not be checked raises instead of returning a report.
    """

    source: str
    """The input as the caller named it."""
    output: str
    """The file written (its final name, after the atomic rename)."""
    target: Literal["safetensors", "onnx"]
    """What the output is."""
    source_format: str
    """The input's format as the reader detected it (``torch-zip``, ``torch-legacy``...)."""
    tensors: int
    """Tensors written."""
    checked: int
    """Tensors read back from the output and found identical (or, for ONNX, compared)."""
    bytes_written: int
    """Size of the output file."""
    sha256: str
    """SHA-256 of the output file, hex: pin it in a policy or sign it next."""
    sandboxed: bool
    """Whether the untrusted input was parsed (or the export run) in the sandbox worker."""
    layers: tuple[str, ...] = ()
    """Sandbox layers that were applied, when ``sandboxed``."""
    seconds: float = 0.0
    """Wall time of the whole conversion, checks included."""
    notes: tuple[str, ...] = field(default_factory=tuple)
    """What the caller should know (dropped non-tensor values, renamed shared tensors...)."""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["layers"] = list(self.layers)
        out["notes"] = list(self.notes)
        return out
