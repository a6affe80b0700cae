"""Start the sandbox worker without running the package ``__init__`` files: ``python -I <this>``.

``safeload/__init__.py`` imports the whole public API (policy models, signing, cryptography,
the loader...) and ``safeload/policy/__init__.py`` every policy module: about 0.2 s of start-up
the worker never uses. Here the three packages the worker passes through (``safeload``,
``safeload.sandbox``, ``safeload.policy``) are registered as bare package objects over their
real folders, so only what the worker itself imports runs: ``errors``, ``policy._limits``,
``formats`` and the sandbox's own modules.

``safeload.policy`` and ``safeload.policy._limits`` give :class:`WorkerLimits` as ``Limits``,
because the readers import it from there: the parent already validated the limits with the
pydantic model, so the worker holds the parent's values read-only and never imports pydantic
(about half of its start-up). It has no defaults: ``Limits()`` in the worker is an error, and a
field the worker lacks is an AttributeError; both come back as refusals, never a silent
fallback. Any other name from these bare packages fails the same way (ImportError). Run as a
script (``-I`` keeps the script's folder off ``sys.path``), it finds the package next to
itself: the files the parent imported.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Mapping
from importlib.machinery import ModuleSpec
from pathlib import Path
from typing import Any

__all__ = ["WorkerLimits", "bare_packages", "main"]


class WorkerLimits:
    """The parent's validated ``Limits`` values, read-only, without pydantic (worker only)."""

    __slots__ = ("_values",)
    _values: dict[str, int]

    def __init__(self, **values: int) -> None:
        if not values:
            raise TypeError("the sandbox worker has no default limits; the parent sends them")
        for key, value in values.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise TypeError(f"limit {key!r} must be a non-negative int")
        object.__setattr__(self, "_values", dict(values))

    @classmethod
    def model_validate(cls, raw: object) -> WorkerLimits:
        if not isinstance(raw, Mapping) or not all(isinstance(k, str) for k in raw):
            raise TypeError("limits must be an object")
        return cls(**raw)

    def model_dump(self) -> dict[str, int]:
        return dict(self._values)

    def __getattr__(self, name: str) -> int:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"the worker was not sent limit {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("limits are read-only")


def _package(name: str, folder: Path) -> types.ModuleType:
    existing = sys.modules.get(name)
    if existing is not None:  # imported normally already (tests): use the real package
        return existing
    spec = ModuleSpec(name, None, is_package=True)
    spec.submodule_search_locations = [str(folder)]
    module = types.ModuleType(name, f"bare package over {folder} (sandbox worker start-up)")
    module.__spec__ = spec
    module.__path__ = [str(folder)]
    module.__package__ = name
    module.__file__ = None
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)
    return module


def bare_packages(root: Path) -> None:
    """Register ``safeload``, ``safeload.sandbox`` and ``safeload.policy`` without their inits."""
    _package("safeload", root)
    _package("safeload.sandbox", root / "sandbox")
    policy = _package("safeload.policy", root / "policy")
    if "safeload.policy._limits" not in sys.modules:
        limits = types.ModuleType("safeload.policy._limits", WorkerLimits.__doc__)
        limits.Limits = WorkerLimits  # type: ignore[attr-defined]
        limits.__all__ = ["Limits"]  # type: ignore[attr-defined]
        sys.modules[limits.__name__] = limits
        policy._limits = limits  # type: ignore[attr-defined]
    if not hasattr(policy, "Limits"):
        policy.Limits = WorkerLimits  # type: ignore[attr-defined]


def main() -> None:
    here = Path(__file__).resolve().parent
    # ``-I`` keeps this folder off sys.path (3.11+); make sure, or ``_worker`` et al. would
    # also be importable as top-level modules, a second copy of each.
    sys.path[:] = [p for p in sys.path if p and Path(p).resolve() != here]
    bare_packages(here.parent)
    from safeload.sandbox import _worker

    if sys.argv[1:] == ["--fork-server"]:
        _worker.serve()
    else:
        _worker.main()


if __name__ == "__main__":
    main()
