"""integrations capability: ``load`` (the ``torch.load`` replacement), ``inspect`` and
``get_unsafe_globals``, ``scan``, ``from_pretrained``, ``patch()``, and the guarded ONNX Runtime
session (``onnx_session``) with its graph check."""

from __future__ import annotations

from safeload.integrations._load import ModelInfo, get_unsafe_globals, inspect, load

__all__ = ["ModelInfo", "get_unsafe_globals", "inspect", "load"]
