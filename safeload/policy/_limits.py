"""Resource limits every reader enforces, so hostile files are refused before memory runs out.

The defaults are generous enough for real multi-GB checkpoints and tight enough that a pickle
bomb, a stride-0 "terabyte" view or a zip bomb is refused in milliseconds. Policies may only
lower them when layered (see ``safeload.policy``).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Limits"]

_GiB = 1 << 30


class Limits(BaseModel):
    """Upper bounds applied while reading an untrusted model file."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    max_file_bytes: int = Field(default=512 * _GiB, ge=0)
    """Largest single file that will be opened, in bytes."""

    max_total_bytes: int = Field(default=2048 * _GiB, ge=0)
    """Largest whole model (all files together), in bytes."""

    max_decompressed_bytes: int = Field(default=4 * _GiB, ge=0)
    """Largest output of a gzip/bz2/lzma/zlib wrapper, or of all deflated members of one zip
    together, in bytes. Inflated bytes live in memory, so the default stays well under a
    small host's RAM (deflate reaches ~1000:1: 64 GiB was a 64 MB file); compressed wrappers
    around checkpoints are rare and small, and a policy can raise it."""

    max_tensors: int = Field(default=1_000_000, ge=0)
    """Most tensors (or arrays) one file may hold."""

    max_tensor_dims: int = Field(default=64, ge=0)
    """Most dimensions one tensor may have."""

    max_tensor_elements: int = Field(default=1 << 40, ge=0)
    """Most logical elements one tensor may claim (a stride-0 view claims more than it stores)."""

    max_pickle_opcodes: int = Field(default=50_000_000, ge=0)
    """Most opcodes the pickle reader executes for one pickle stream."""

    max_memo_entries: int = Field(default=5_000_000, ge=0)
    """Most memo slots one pickle stream may fill."""

    max_nesting_depth: int = Field(default=256, ge=0, le=1000)
    """Deepest nesting of MARKs and containers in a pickle stream. At most 1000 (CPython's
    recursion limit): hashing or comparing a tuple nested ~10**5 deep overflows the C stack
    (a segfault, not an exception), and no checkpoint nests anywhere near that."""

    max_container_items: int = Field(default=50_000_000, ge=0)
    """Most items one list, tuple, dict or set built by the pickle reader may hold."""

    max_pickle_alloc_bytes: int = Field(default=4 * _GiB, ge=0)
    """Most bytes of strings/bytes the pickle reader may allocate in total for one stream."""

    max_zip_members: int = Field(default=1_000_000, ge=0)
    """Most members a zip archive (PyTorch checkpoint, .npz) may list."""
