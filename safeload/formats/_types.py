"""Values that flow from the pickle reader to the container readers.

The pickle reader never touches tensor bytes. A persistent id becomes a :class:`StorageRef`
(what the container says a storage is), and ``torch._utils._rebuild_tensor_v2`` and friends
become :class:`TensorSpec` placeholders (a checked view description over a storage). The
container reader then materialises every spec into a NumPy array or a torch tensor over the
verified buffer. Keeping the two apart means a hostile pickle can describe, but never create,
memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "StorageRef",
    "StorageType",
    "TensorSpec",
    "TorchDType",
    "TorchDevice",
    "TorchLayout",
    "TorchQScheme",
]


@dataclass(frozen=True, slots=True)
class StorageType:
    """What an allowlisted storage class global (``torch.FloatStorage``...) stands for."""

    dtype: str
    """The torch dtype name (``"float32"``); ``"uint8"`` for ``torch.UntypedStorage``."""


@dataclass(frozen=True, slots=True)
class StorageRef:
    """A storage named by a persistent id: ``key`` is the record name inside the container."""

    key: str
    dtype: str
    """Storage element type, as the torch name (``"float32"``, ``"bfloat16"``, ``"bool"``...)."""
    numel: int
    """Element count the pickle claims; readers check it against the record's real size."""
    location: str = "cpu"


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A strided view over a :class:`StorageRef`, validated to lie inside it."""

    storage: StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: str
    requires_grad: bool = False
    kind: str = "tensor"
    """``"tensor"`` or ``"parameter"`` (``torch.nn.Parameter`` wrappers are kept as a flag)."""
    extra: dict[str, object] = field(default_factory=dict, compare=False)


@dataclass(frozen=True, slots=True)
class TorchDType:
    """What an allowlisted dtype global (``torch.float32``...) stands for; torch is not needed."""

    name: str
    """The torch dtype name without the ``torch.`` prefix (``"float32"``, ``"float8_e4m3fn"``)."""


@dataclass(frozen=True, slots=True)
class TorchDevice:
    """A ``torch.device`` named by a pickle; only the device string, never a live device object."""

    spec: str
    """``"cpu"``, ``"cuda"``, ``"cuda:0"``, ``"meta"``...; readers decide where tensors go."""


@dataclass(frozen=True, slots=True)
class TorchLayout:
    """A ``torch.strided``-style layout marker; only ``"strided"`` is ever produced."""

    name: str


@dataclass(frozen=True, slots=True)
class TorchQScheme:
    """A quantization scheme global (``torch.per_tensor_affine``...), kept as its name only."""

    name: str
