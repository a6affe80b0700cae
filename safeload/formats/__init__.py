"""Model file formats: content detection and data-only readers.

``detect`` says what a file is; ``read`` turns its bytes into plain values and tensors without
running anything it names; ``analyze`` validates the same things without building tensors (the
scanner's entry); ``unsafe_globals`` lists what a pickle asks for that no allowlist grants.
"""

from __future__ import annotations

from safeload.formats._detect import Detection, Format, detect
from safeload.formats._read import Analysis, ReadResult, TensorInfo, analyze, read, unsafe_globals

__all__ = [
    "Analysis",
    "Detection",
    "Format",
    "ReadResult",
    "TensorInfo",
    "analyze",
    "detect",
    "read",
    "unsafe_globals",
]
