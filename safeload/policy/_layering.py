"""Tighten-only layering: a child policy may narrow what its parents allow, never widen it.

Why a rule per field instead of a generic deep merge: "merge" means something different for each
knob (an allowlist intersects, a limit takes the minimum, signer requirements add up), and a
generic override would let ``team.toml`` quietly switch an org baseline to audit mode. Only the
fields a child *wrote* take part; anything it left out is inherited unchanged. A written value
that would loosen its parent is a :class:`~safeload.errors.PolicyError` naming the field and
both files. Sibling parents (``extends = [a, b]``) combine to the strictest of both, without the
loosening check, since neither is the other's parent.

Signers are the one place where "accumulate" alone would widen: a team adding its own key to
the org's list, with one signature required, would let the team's key stand in for the org's.
So every layer that lists signers also contributes a :class:`SignerGroup` to
``trust.requirements`` (its own signers, and its effective ``min_signers`` capped at how many it
lists), and verification requires *every* group. ``trust.signers`` stays the union (what a
signature may be checked against) and ``trust.min_signers`` the overall distinct count.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from safeload.errors import PolicyError
from safeload.policy._models import Policy, SignerGroup

__all__ = [
    "DEFAULT_SOURCE",
    "Layered",
    "combine",
    "explicit_leaves",
    "leaf_paths",
    "refine",
    "refine_layered",
]

DEFAULT_SOURCE = "<built-in default>"
_SECTIONS = ("formats", "trust", "sources", "limits", "pickle", "onnx", "sandbox")
_TOP_LEAVES = ("version", "mode", "audit_log")


class _ConflictError(Exception):
    """Two layers set values that cannot be combined (neither is stricter)."""


@dataclass(frozen=True)
class Layered:
    """An effective policy plus which file set each leaf (``"limits.max_tensors"`` -> file)."""

    policy: Policy
    provenance: Mapping[str, str]
    files: tuple[str, ...]


def leaf_paths() -> list[str]:
    """Every leaf field as users write it in a policy file, in schema order."""
    paths = list(_TOP_LEAVES)
    for section in _SECTIONS:
        model = Policy.model_fields[section].annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        paths.extend(f"{section}.{name}" for name in model.model_fields)
    return paths


def explicit_leaves(policy: Policy) -> list[str]:
    """Leaves the document actually wrote (pydantic's ``model_fields_set``, one level deep)."""
    out = [name for name in _TOP_LEAVES if name in policy.model_fields_set]
    for section in _SECTIONS:
        if section in policy.model_fields_set:
            sub: BaseModel = getattr(policy, section)
            out.extend(f"{section}.{name}" for name in sub.model_fields_set)
    return out


def _get(policy: Policy, leaf: str) -> Any:
    obj: Any = policy
    for part in leaf.split("."):
        obj = getattr(obj, part)
    return obj


# --- per-field rules: (parent, child) -> (merged value, reason the child loosens or None) ----

_Rule = Callable[[Any, Any], tuple[Any, str | None]]


def _intersect(parent: tuple[Any, ...], child: tuple[Any, ...]) -> tuple[Any, str | None]:
    extra = [x for x in child if x not in parent]
    merged = tuple(x for x in parent if x in child)
    return merged, (f"adds {_show(extra)} not allowed by the parent" if extra else None)


def _intersect_empty_all(parent: tuple[str, ...], child: tuple[str, ...]) -> tuple[Any, str | None]:
    """Allowlists where empty means "everything standard" (onnx.allowed_ops)."""
    if not parent:
        return child, None
    if not child:
        return parent, "empties the list, which means every op, wider than the parent's list"
    merged, why = _intersect(parent, child)
    if not merged:
        raise _ConflictError("the lists share no op; an empty result would mean every op")
    return merged, why


def _union(parent: tuple[Any, ...], child: tuple[Any, ...]) -> tuple[Any, str | None]:
    return parent + tuple(x for x in child if x not in parent), None


def _minimum(parent: float, child: float) -> tuple[Any, str | None]:
    return min(parent, child), (f"raises {parent} to {child}" if child > parent else None)


def _maximum(parent: int, child: int) -> tuple[Any, str | None]:
    return max(parent, child), (f"lowers {parent} to {child}" if child < parent else None)


def _any_true(parent: bool, child: bool) -> tuple[Any, str | None]:
    return parent or child, ("turns off a requirement the parent sets" if parent > child else None)


def _all_true(parent: bool, child: bool) -> tuple[Any, str | None]:
    return parent and child, ("allows what the parent forbids" if child > parent else None)


def _ranked(*order: str) -> _Rule:
    """Enumerations where later entries are stricter (audit < enforce)."""

    def rule(parent: str, child: str) -> tuple[Any, str | None]:
        stricter = max(parent, child, key=order.index)
        looser = order.index(child) < order.index(parent)
        return stricter, (f"relaxes {parent!r} to {child!r}" if looser else None)

    return rule


def _same_or_unset(parent: Any, child: Any) -> tuple[Any, str | None]:
    if parent is None or parent == child:
        return child, None
    if child is None:
        return parent, "unsets a value the parent requires"
    raise _ConflictError(f"{_show(parent)} and {_show(child)} differ; a child may not replace it")


def _unchanged(parent: Any, child: Any) -> tuple[Any, str | None]:
    """Trust roots: a different root is a different set of trusted signers, never tighter."""
    if parent == child:
        return parent, None
    # A conflict, not a loosening: sibling parents with different roots must fail too.
    raise _ConflictError(f"{_show(parent)} and {_show(child)} differ; the trust root is fixed")


def _accumulate(parent: tuple[Any, ...], child: tuple[Any, ...]) -> tuple[Any, str | None]:
    return _union(parent, child)


def _pins(parent: Mapping[str, str], child: Mapping[str, str]) -> tuple[Any, str | None]:
    merged = dict(parent)
    for name, digest in child.items():
        if merged.get(name, digest) != digest:
            raise _ConflictError(f"{name!r} is pinned to {merged[name]} and to {digest}")
        merged[name] = digest
    return merged, None


def _repos(parent: tuple[str, ...] | None, child: tuple[str, ...] | None) -> tuple[Any, str | None]:
    """None means any repo; a child pattern must be covered by one of the parent's patterns."""
    if parent is None:
        return child, None
    if child is None:
        return parent, "allows any repo where the parent has a list"
    outside = [c for c in child if not any(_covers(p, c) for p in parent)]
    merged = tuple(c for c in child if c not in outside)
    return merged, (f"adds {_show(outside)} not covered by the parent" if outside else None)


_GLOB_CHARS = frozenset("*?[")


def _covers(parent: str, child: str) -> bool:
    """True only when every repo ``child`` matches is matched by ``parent`` too.

    Matching the child *pattern* as a string against the parent is not that: ``org/a*c`` is
    "matched" by ``org/a?c`` (``*`` is one character) yet allows ``org/abbbc``. Sound cases
    only: the same pattern, a literal the parent matches, or a parent ``prefix*`` (a plain
    prefix) that the child's own plain prefix extends. Anything else is refused as wider.
    """
    if child == parent:
        return True
    if not _GLOB_CHARS & set(child):
        return fnmatch.fnmatchcase(child, parent)
    prefix = parent[:-1]
    return parent.endswith("*") and not _GLOB_CHARS & set(prefix) and child.startswith(prefix)


def _globals(parent: tuple[Any, ...], child: tuple[Any, ...]) -> tuple[Any, str | None]:
    names = {g.name for g in child}
    extra = [g.name for g in child if g.name not in {p.name for p in parent}]
    merged = tuple(g for g in parent if g.name in names)
    return merged, (f"adds globals {_show(extra)} the parent does not allow" if extra else None)


def _version(parent: int, child: int) -> tuple[Any, str | None]:
    if parent != child:
        raise _ConflictError(f"version {child} cannot extend version {parent}")
    return parent, None


_RULES: dict[str, _Rule] = {
    "version": _version,
    "mode": _ranked("audit", "enforce"),
    "audit_log": _same_or_unset,
    "formats.allowed": _intersect,
    "trust.require_signature": _any_true,
    "trust.min_signers": _maximum,
    "trust.allow_ca_leaf": _all_true,
    "trust.trust_config": _unchanged,
    "trust.ignore_paths": _intersect,
    "trust.allow_symlinks": _all_true,
    "trust.allow_unsafe_mmap": _all_true,
    "trust.signers": _accumulate,
    "trust.requirements": _union,
    "trust.pinned_digests": _pins,
    "sources.allowed_repos": _repos,
    "sources.require_revision": _any_true,
    "pickle.extra_globals": _globals,
    "onnx.allowed_domains": _intersect,
    "onnx.allowed_ops": _intersect_empty_all,
    "onnx.denied_ops": _union,
    "onnx.opset_min": _maximum,
    "onnx.opset_max": _minimum,
    "onnx.external_data": _ranked("inside_model_dir", "forbid"),
    "onnx.max_nodes": _minimum,
    "onnx.max_initializer_bytes": _minimum,
    "onnx.run_timeout_seconds": _minimum,
    "sandbox.mode": _ranked("never", "untrusted", "always"),
    "sandbox.required_layers": _union,
}


def _rule_for(leaf: str) -> _Rule:
    if leaf.startswith("limits."):
        return _minimum
    return _RULES[leaf]


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(repr(v) for v in value) + "]"
    return repr(value)


# --- applying the rules -----------------------------------------------------------------------


def _rebuild(policy: Policy, values: Mapping[str, Any], files: Iterable[str]) -> Policy:
    """Write merged leaves back and re-run every validator (e.g. opset_min <= opset_max)."""
    data = policy.model_dump()
    for leaf, value in values.items():
        target = data
        *head, last = leaf.split(".")
        for part in head:
            target = target[part]
        target[last] = value.model_dump() if isinstance(value, BaseModel) else value
        if leaf in ("trust.signers", "trust.requirements", "pickle.extra_globals"):
            target[last] = [v.model_dump() if isinstance(v, BaseModel) else v for v in value]
    data["extends"] = ()
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise PolicyError(
            f"layered policies combine into an invalid policy at {where}: {first['msg']}",
            rule=where or None,
            path=" + ".join(files),
        ) from None


def _merge_leaves(
    base: Layered,
    other: Policy,
    other_source: str,
    leaves: Iterable[str],
    *,
    check: bool,
) -> Layered:
    values: dict[str, Any] = {}
    provenance = dict(base.provenance)
    for leaf in leaves:
        parent_value, child_value = _get(base.policy, leaf), _get(other, leaf)
        parent_from = base.provenance.get(leaf, DEFAULT_SOURCE)
        parent_named = (
            parent_from
            if leaf in base.provenance
            else f"the built-in default kept by {' + '.join(base.files)}"
        )
        try:
            merged, loosens = _rule_for(leaf)(parent_value, child_value)
        except _ConflictError as exc:
            raise PolicyError(
                f"{leaf}: conflicting values in layered policies",
                rule=leaf,
                path=other_source,
                detail=f"{exc} ({other_source} vs {parent_named})",
            ) from None
        if check and loosens is not None:
            raise PolicyError(
                f"{leaf}: a child policy may only tighten its parent, and {other_source} "
                f"loosens {parent_named}",
                rule=leaf,
                path=other_source,
                detail=f"{other_source} {loosens} (parent value from {parent_named})",
            )
        values[leaf] = merged
        if merged == child_value and merged != parent_value:
            provenance[leaf] = other_source
        elif merged != parent_value:
            provenance[leaf] = f"{parent_from}; {other_source}"
        elif leaf not in provenance and merged == child_value:
            provenance[leaf] = other_source
    files = (*base.files, other_source)
    return Layered(_rebuild(base.policy, values, files), provenance, files)


_REQUIREMENTS = "trust.requirements"


def _own_group(written: Policy, effective: Policy, source: str) -> SignerGroup | None:
    """The requirement a layer adds: the signers it listed itself, and its effective count.

    The count is capped at the group's size: ``min_signers = 2`` beside one new key means
    "that key and one more", and the "one more" is the overall ``trust.min_signers``, which
    still counts every trusted signer.
    """
    own = written.trust.signers
    if "signers" not in written.trust.model_fields_set or not own:
        return None
    count = min(effective.trust.min_signers, len(own))
    return SignerGroup(signers=own, min_signers=count, source=source)


def _add_group(layered: Layered, group: SignerGroup | None) -> Layered:
    groups = layered.policy.trust.requirements
    if group is None or group in groups:
        return layered
    provenance = dict(layered.provenance)
    earlier = provenance.get(_REQUIREMENTS)
    provenance[_REQUIREMENTS] = group.source if earlier is None else f"{earlier}; {group.source}"
    values = {_REQUIREMENTS: (*groups, group)}
    return Layered(_rebuild(layered.policy, values, layered.files), provenance, layered.files)


def root(policy: Policy, source: str) -> Layered:
    """A policy with no parents: every leaf it wrote comes from ``source``."""
    provenance = dict.fromkeys(explicit_leaves(policy), source)
    layered = Layered(policy.model_copy(update={"extends": ()}), provenance, (source,))
    if policy.trust.requirements:  # built in Python with explicit groups: taken as written
        return layered
    return _add_group(layered, _own_group(policy, policy, source))


def refine(parent: Layered, child: Policy, child_source: str) -> Layered:
    """Apply ``child`` on top of ``parent``: tighten-only, loosening raises PolicyError.

    Signers the child lists become a requirement of their own, on top of the parent's.
    """
    merged = _merge_leaves(parent, child, child_source, explicit_leaves(child), check=True)
    return _add_group(merged, _own_group(child, merged.policy, child_source))


def refine_layered(parent: Layered, child: Layered) -> Layered:
    """Apply an already-merged ``child`` (with its own ``extends``) on top of ``parent``,
    tighten-only, for the leaves the child's files actually set."""
    source = " + ".join(child.files)
    merged = _merge_leaves(parent, child.policy, source, list(child.provenance), check=True)
    return Layered(merged.policy, merged.provenance, (*parent.files, *child.files))


def combine(first: Layered, second: Layered) -> Layered:
    """Two sibling parents: the strictest of both, for every leaf either of them set."""
    merged = _merge_leaves(
        first, second.policy, " + ".join(second.files), list(second.provenance), check=False
    )
    provenance = dict(merged.provenance)
    for leaf, source in second.provenance.items():
        if leaf not in first.provenance:
            provenance[leaf] = source
    return Layered(merged.policy, provenance, (*first.files, *second.files))
