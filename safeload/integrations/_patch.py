"""``safeload.patch()``: guard an existing application without editing its code.

Replaces the loaders an application already calls with safeload's: ``torch.load`` (and
``torch.serialization.load``, the same function) routes to :func:`safeload.load`;
``transformers.modeling_utils.load_state_dict`` (which transformers calls for every weight
file, falling back to ``torch.load`` for ``.bin``) routes there too; ``numpy.load`` keeps
working but refuses ``allow_pickle=True``; ``onnxruntime.InferenceSession`` becomes
:func:`safeload.onnx_session`. Nothing is patched that the app could not already
reach by attribute, and a name an app bound before patching (``from torch import load``)
keeps the original: patch early, before such imports.

Why one lock and a record of originals: patching is process-global state, so ``patch()`` is
idempotent (a second call changes nothing and audits nothing), ``unpatch()`` puts back
exactly the objects it replaced, and threads racing to patch see one installation. Each
installed and removed target leaves one ``safeload.audit`` line.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from safeload.errors import UsageError
from safeload.policy import Policy, audit_event, effective_policy

__all__ = ["audit_event", "is_patched", "patch", "patched", "unpatch"]

logger = logging.getLogger(__name__)

_MARK = "__safeload_patched__"


@dataclass
class _State:
    lock: threading.RLock = field(default_factory=threading.RLock)
    originals: dict[tuple[str, str], Any] = field(default_factory=dict)
    """(module name, attribute) -> the object that was there before patching."""
    policy: Policy | None = None
    """The policy given to patch() (resolved once); None: each load finds the effective one."""
    audit_policy: Policy | None = None
    explicit: bool = False
    """Installed by patch() (only unpatch() removes it), not only by a patched() block."""
    generation: int = 0


_state = _State()


# -- the replacements -------------------------------------------------------------------------
def _guard_torch_load(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def load(
        f: Any,
        map_location: Any = None,
        pickle_module: Any = None,
        *,
        weights_only: bool | None = None,
        mmap: bool | None = None,
        **pickle_load_args: Any,
    ) -> Any:
        """``torch.load`` under safeload.patch(): read by safeload, never unpickled."""
        from safeload.integrations._load import load as safe_load

        return safe_load(f, map_location, pickle_module, weights_only=weights_only, mmap=mmap,
                         policy=_state.policy, **pickle_load_args)

    return load


def _guard_load_state_dict(original: Callable[..., Any]) -> Callable[..., Any]:
    """transformers' per-file loader; its signature differs across releases, so bind to it."""
    signature = inspect.signature(original)
    first = next(iter(signature.parameters))  # checkpoint_file, in every release so far

    @functools.wraps(original)
    def load_state_dict(*args: Any, **kwargs: Any) -> Any:
        from safeload.integrations._load import load

        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        arguments = bound.arguments
        path = arguments[first]
        location = arguments.get("map_location", "cpu")
        weights_only = arguments.get("weights_only", True)
        return load(path, location, weights_only=weights_only, policy=_state.policy)

    return load_state_dict


def _guard_numpy_load(original: Callable[..., Any]) -> Callable[..., Any]:
    signature = inspect.signature(original)

    @functools.wraps(original)
    def load(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        if bound.arguments.get("allow_pickle"):
            file = bound.arguments.get("file")
            raise UsageError(
                "numpy.load(allow_pickle=True) is refused under safeload.patch()",
                path=os.fspath(file) if isinstance(file, (str, os.PathLike)) else None,
                rule="patch.numpy_allow_pickle",
                detail="object arrays are pickles that can run code; use safeload.load(path, "
                "framework='numpy') for plain arrays",
            )
        return original(*args, **kwargs)

    return load


def _guard_ort_session(original: Callable[..., Any]) -> Callable[..., Any]:
    """``onnxruntime.InferenceSession`` -> :func:`safeload.onnx_session` (a ``GuardedSession``).

    The caller's ``SessionOptions`` object is never used (nothing can tell whether a custom op
    library was registered on it): only its ``intra_op_num_threads`` is carried over into
    safeload's hardened options. Providers other than CPU, provider options and other keyword
    arguments are refused; call ``safeload.onnx_session`` with ``unsafe_allow_providers``.
    """

    @functools.wraps(original, updated=())
    def inference_session(
        path_or_bytes: Any,
        sess_options: Any = None,
        providers: Any = None,
        provider_options: Any = None,
        **kwargs: Any,
    ) -> Any:
        from safeload.integrations._onnx_session import onnx_session

        if provider_options or kwargs:
            raise UsageError(
                "provider options and extra arguments are refused under safeload.patch()",
                rule="patch.onnxruntime",
                detail="call safeload.onnx_session(...) directly",
            )
        threads = None
        if sess_options is not None:
            threads = int(sess_options.intra_op_num_threads) or None
            logger.warning("onnxruntime.InferenceSession under safeload.patch(): the given "
                           "SessionOptions are replaced by hardened ones (threads kept)")
        return onnx_session(path_or_bytes, policy=_state.policy, intra_op_num_threads=threads,
                            providers=("CPUExecutionProvider",) if providers is None
                            else providers)  # fmt: skip

    return inference_session


def _targets() -> list[tuple[str, str, Callable[[Any], Any]]]:
    """(module, attribute, make-replacement-from-original) for what is importable now."""
    out: list[tuple[str, str, Callable[[Any], Any]]] = [("numpy", "load", _guard_numpy_load)]
    if "torch" in sys.modules or importlib.util.find_spec("torch") is not None:
        out += [("torch", "load", _guard_torch_load),
                ("torch.serialization", "load", _guard_torch_load)]
    # Only when transformers is already imported: importing it here would cost every app
    # seconds. If it is imported later, its load_state_dict still calls torch.load by
    # attribute, which is patched above.
    if "transformers.modeling_utils" in sys.modules:
        out.append(("transformers.modeling_utils", "load_state_dict", _guard_load_state_dict))
    if "onnxruntime" in sys.modules or importlib.util.find_spec("onnxruntime") is not None:
        out.append(("onnxruntime", "InferenceSession", _guard_ort_session))
    return out


# -- installing and removing ------------------------------------------------------------------
def _install(policy: Policy | None, audit_policy: Policy | None) -> None:
    """Install every target not yet installed; if one fails, undo only this call's targets
    (an existing patch stays: failing to add a target must not remove protection)."""
    _state.policy = policy
    _state.audit_policy = audit_policy
    _state.generation += 1
    added: list[tuple[str, str]] = []
    try:
        _install_targets(added)
    except BaseException:
        _restore(added)
        raise
    for module_name, attr in added:
        audit_event("patched", audit_policy, target=f"{module_name}.{attr}")


def _install_targets(added: list[tuple[str, str]]) -> None:
    made: dict[int, Any] = {}
    for module_name, attr, make in _targets():
        module = importlib.import_module(module_name)
        original = getattr(module, attr)
        if getattr(original, _MARK, False):
            continue
        # torch.load and torch.serialization.load are one function; keep them one after patching.
        replacement = made.get(id(original))
        if replacement is None:
            replacement = made[id(original)] = make(original)
            setattr(replacement, _MARK, True)
        _state.originals[(module_name, attr)] = original
        setattr(module, attr, replacement)
        added.append((module_name, attr))


def _restore(keys: list[tuple[str, str]]) -> None:
    for module_name, attr in keys:
        original = _state.originals.pop((module_name, attr))
        module = sys.modules.get(module_name)
        if module is None:
            continue
        current = getattr(module, attr, None)
        if current is not None and not getattr(current, _MARK, False):
            logger.warning("%s.%s was replaced again after safeload.patch(); restoring the "
                           "original anyway", module_name, attr)
        setattr(module, attr, original)


def _uninstall() -> None:
    """Restore everything first, then audit: an unwritable audit log must not leave the
    process half patched."""
    keys = list(_state.originals)
    audit_policy = _state.audit_policy
    _restore(keys)
    _state.policy = None
    _state.audit_policy = None
    _state.explicit = False
    for module_name, attr in keys:
        audit_event("unpatched", audit_policy, target=f"{module_name}.{attr}")


def _resolve(policy: Policy | str | os.PathLike[str] | None) -> tuple[Policy | None, Policy]:
    """(what each load gets, what audit lines name): a bad policy file fails at patch time."""
    resolved = effective_policy(policy)
    return (None if policy is None else resolved), resolved


def _check_same(policy: Policy | None) -> None:
    if policy != _state.policy:
        raise UsageError("safeload is already patched with a different policy",
                         rule="patch.policy", detail="call safeload.unpatch() first")


def is_patched() -> bool:
    """Whether safeload's loaders are installed right now."""
    with _state.lock:
        return bool(_state.originals)


def patch(*, policy: Policy | str | os.PathLike[str] | None = None) -> None:
    """Route ``torch.load`` (and transformers' and NumPy's loaders) through safeload.

    Idempotent; a second call with a different policy is refused rather than silently
    switching the policy under running code. Undo with :func:`unpatch`. When the policy sends
    loads to the sandbox (``sandbox.mode`` other than ``never``), the sandbox's fork server is
    started now, at the application's start-up, instead of inside its first load.
    """
    load_policy, audit_policy = _resolve(policy)
    with _state.lock:
        if _state.originals:
            _check_same(load_policy)
            _state.explicit = True
            # transformers may have been imported since: patch what is new, leave the rest.
            _install(_state.policy, _state.audit_policy)
            return
        _install(load_policy, audit_policy)
        _state.explicit = True
    _prewarm_for(audit_policy)


def _prewarm_for(policy: Policy) -> None:
    """Start the fork server if this policy will use it (best effort: a failure here only
    means the first sandboxed load starts it, or reports why it cannot)."""
    if policy.sandbox.mode != "never":
        from safeload.sandbox._runner import prewarm_quietly

        prewarm_quietly()


def unpatch() -> None:
    """Put back exactly the objects :func:`patch` replaced; a no-op when not patched."""
    with _state.lock:
        _uninstall()


@contextmanager
def patched(*, policy: Policy | str | os.PathLike[str] | None = None) -> Iterator[None]:
    """``with safeload.patched():`` patch for the block; restores on exit unless the loaders
    were already patched before it (then the outer patch stays)."""
    load_policy, audit_policy = _resolve(policy)
    with _state.lock:
        owner = not _state.originals
        if owner:
            _install(load_policy, audit_policy)
        else:
            _check_same(load_policy)
        generation = _state.generation
    try:
        yield
    finally:
        with _state.lock:
            if owner and not _state.explicit and _state.generation == generation:
                _uninstall()
