"""integrations capability: ``load`` (the ``torch.load`` replacement), ``inspect`` and
``get_unsafe_globals``; later ``from_pretrained``, ``patch()`` and the ORT session wrapper."""

from __future__ import annotations

from safeload.integrations._load import ModelInfo, get_unsafe_globals, inspect, load

__all__ = ["ModelInfo", "get_unsafe_globals", "inspect", "load"]
