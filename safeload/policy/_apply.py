"""What the readers take from a policy: limits, and which user globals a pickle may name.

Why globals are *selected from the program's registry* and never resolved from the policy: a
policy file is text anyone with write access to a config folder can edit. If naming
``os.system`` in it imported ``os.system``, the policy would be a code-execution vector.
So the class objects come only from what the program registered in code with
``safeload.add_safe_globals``; the policy can only narrow that set, and naming an unregistered
class is an error rather than a silent no-op.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from safeload.errors import PolicyError
from safeload.policy._limits import Limits
from safeload.policy._models import Policy

__all__ = ["select_extra_globals", "tighter_limits"]

_T = TypeVar("_T")


def tighter_limits(policy_limits: Limits, caller_limits: Limits | None) -> Limits:
    """The policy's limits, lowered further by a caller's ``limits=`` (never raised by it)."""
    if caller_limits is None:
        return policy_limits
    merged = {
        name: min(getattr(policy_limits, name), getattr(caller_limits, name))
        for name in Limits.model_fields
    }
    return Limits(**merged)


def select_extra_globals(policy: Policy, registered: Mapping[str, _T]) -> dict[str, _T]:
    """The registered user globals this policy lets the pickle reader build.

    ``registered`` is the program's registry (``safeload.get_safe_globals()``). An empty
    ``pickle.extra_globals`` leaves the registry as the program set it; a non-empty one keeps
    only the listed names, and a listed name the program never registered is a PolicyError.
    """
    entries = policy.pickle.extra_globals
    if not entries:
        return dict(registered)
    for index, entry in enumerate(entries):
        if entry.name not in registered:
            raise PolicyError(
                f"pickle.extra_globals[{index}]: {entry.name} is allowed by the policy but was "
                "not registered by the program",
                rule=f"pickle.extra_globals[{index}]",
                detail="register the class in code with safeload.add_safe_globals; safeload "
                "never imports names written in a policy file",
            )
    return {entry.name: registered[entry.name] for entry in entries}
