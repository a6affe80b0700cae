"""Reading policy files, resolving ``extends``, and finding the policy that applies.

Why the loader, not the models, owns versioning and error wording: a user editing
``team.toml`` needs ``team.toml: trust.signers[1].issuer: Field required``, not pydantic's
internal location with union tags. Every failure here is a :class:`PolicyError` carrying the
file (``path``) and the field as users write it (``rule``).

Discovery (first hit wins): explicit argument > ``$SAFELOAD_POLICY`` > ``./safeload.toml`` >
``[tool.safeload]`` in ``./pyproject.toml`` > ``/etc/safeload/policy.toml`` > the built-in
default, whose values are ``policies/default.toml``.
"""

from __future__ import annotations

import json
import logging
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from safeload.errors import PolicyError
from safeload.policy import _layering
from safeload.policy._models import POLICY_VERSION, Policy

__all__ = ["SYSTEM_POLICY", "effective_policy", "load_policy", "policy_files", "provenance"]

logger = logging.getLogger(__name__)

SYSTEM_POLICY = Path("/etc/safeload/policy.toml")
"""Machine-wide policy, consulted when nothing closer is configured."""

_ENV = "SAFELOAD_POLICY"
_UNION_TAGS = frozenset({"sigstore", "key", "certificate"})


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Read one policy file (TOML, JSON or YAML) and everything it extends.

    Returns the effective, merged policy; :func:`provenance` tells which file set each value.
    """
    return _attach(_load_file(Path(path), ()))


def effective_policy(policy: Policy | str | os.PathLike[str] | None = None) -> Policy:
    """The policy that applies here: the argument, else the first configured one, else default."""
    if isinstance(policy, Policy):
        if policy.__pydantic_private__ and policy.__pydantic_private__.get("_provenance"):
            return policy
        layered = _from_model(policy, "<python>", Path.cwd(), ())
        return _attach(layered)
    if policy is not None:
        return load_policy(policy)
    env = os.environ.get(_ENV)
    if env:
        return load_policy(env)
    local = Path("safeload.toml")
    if local.is_file():
        return _attach(_under_system_policy(_load_file(local, ())))
    pyproject = Path("pyproject.toml")
    if pyproject.is_file():
        table = _read_document(pyproject).get("tool", {}).get("safeload")
        if table is not None:
            if not isinstance(table, dict):
                raise PolicyError("[tool.safeload] must be a table", path=str(pyproject.resolve()))
            source = f"{pyproject.resolve()}[tool.safeload]"
            found = _from_document(table, source, pyproject.resolve().parent, ())
            return _attach(_under_system_policy(found))
    if SYSTEM_POLICY.is_file():
        return load_policy(SYSTEM_POLICY)
    return _attach(_layering.Layered(Policy(), {}, (_layering.DEFAULT_SOURCE,)))


def provenance(policy: Policy) -> dict[str, str]:
    """Which file set each effective value, for every leaf (``"<built-in default>"`` if none)."""
    recorded: Mapping[str, str] = (policy.__pydantic_private__ or {}).get("_provenance") or {}
    return {leaf: recorded.get(leaf, _layering.DEFAULT_SOURCE) for leaf in _layering.leaf_paths()}


def policy_files(policy: Policy) -> tuple[str, ...]:
    """The files (outermost parent first) the effective policy was built from."""
    files = (policy.__pydantic_private__ or {}).get("_files")
    return tuple(files) if files else (_layering.DEFAULT_SOURCE,)


# --- internals ------------------------------------------------------------------------------


def _attach(layered: _layering.Layered) -> Policy:
    policy = layered.policy.model_copy()
    _check_coherent(policy, layered.files)
    private = policy.__pydantic_private__
    assert private is not None
    private["_provenance"] = dict(layered.provenance) or {"version": _layering.DEFAULT_SOURCE}
    private["_files"] = layered.files
    return policy


def _under_system_policy(found: _layering.Layered) -> _layering.Layered:
    """A policy found in the working directory may only tighten the machine's policy.

    The working directory is often a downloaded model repo or a project checkout: a
    ``safeload.toml`` shipped there used to *replace* ``/etc/safeload/policy.toml`` outright
    (``mode = "audit"``, ``require_signature = false``, raised limits). The system policy is
    now its implicit parent, under the same tighten-only rules as ``extends``.
    """
    if not SYSTEM_POLICY.is_file():
        return found
    system = _load_file(SYSTEM_POLICY, ())
    if set(system.files) & set(found.files):  # it already extends the system policy
        return found
    return _layering.refine_layered(system, found)


def _check_coherent(policy: Policy, files: tuple[str, ...]) -> None:
    """Cross-field rules that only make sense once all layers are merged."""
    trust = policy.trust
    where = " + ".join(files)
    if trust.require_signature and not trust.signers:
        raise PolicyError(
            "trust.signers: require_signature is true but no signer is trusted",
            rule="trust.signers",
            path=where,
            detail="an empty signer list trusts no one; list at least one signer",
        )
    if trust.signers and trust.min_signers > len(trust.signers):
        raise PolicyError(
            f"trust.min_signers: {trust.min_signers} signers required but only "
            f"{len(trust.signers)} trusted",
            rule="trust.min_signers",
            path=where,
        )


def _load_file(path: Path, stack: tuple[Path, ...]) -> _layering.Layered:
    path = path.expanduser().resolve()
    if path in stack:
        chain = " -> ".join(str(p) for p in (*stack, path))
        raise PolicyError(
            "extends: cycle between policy files", rule="extends", path=str(path), detail=chain
        )
    return _from_document(_read_document(path), str(path), path.parent, (*stack, path))


def _read_document(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError("cannot read policy file", path=str(path), detail=str(exc)) from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            data = json.loads(text, object_pairs_hook=_unique_keys)
        elif suffix in (".yaml", ".yml"):
            data = yaml.load(text, Loader=_StrictYamlLoader)  # noqa: S506 - a SafeLoader
        else:
            data = tomllib.loads(text)  # TOML itself refuses duplicate keys
    except (ValueError, yaml.YAMLError) as exc:
        raise PolicyError(
            f"policy file is not valid {suffix.lstrip('.').upper() or 'TOML'}",
            path=str(path),
            detail=str(exc),
        ) from None
    if not isinstance(data, dict):
        raise PolicyError("a policy document must be a table/mapping", path=str(path))
    return data


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """JSON and YAML keep the *last* of two equal keys: a reviewer reads
    ``"require_signature": true`` while a later duplicate turns it off. Refused instead."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


class _StrictYamlLoader(yaml.SafeLoader):
    """``SafeLoader`` that refuses duplicate keys and ``<<`` merge keys.

    A merge key imports a whole mapping whose values the explicit keys beside it silently
    override; policies inherit through ``extends``, which is tighten-only and audited.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise yaml.constructor.ConstructorError(
                    None, None, "'<<' merge keys are not allowed; use extends", key_node.start_mark
                )
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key; the base constructor refuses it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
        return super().construct_mapping(node, deep=deep)


def _from_document(
    data: dict[str, Any], source: str, base_dir: Path, stack: tuple[Path, ...]
) -> _layering.Layered:
    version = data.get("version")
    if version is None:
        raise PolicyError(
            f"version: missing; add 'version = {POLICY_VERSION}'", rule="version", path=source
        )
    if version != POLICY_VERSION or isinstance(version, bool):
        raise PolicyError(
            f"version: unsupported policy version {version!r}; this safeload reads version "
            f"{POLICY_VERSION}",
            rule="version",
            path=source,
        )
    try:
        model = Policy.model_validate(data, context={"base_dir": str(base_dir)})
    except ValidationError as exc:
        raise _validation_error(exc, source) from None
    return _from_model(model, source, base_dir, stack)


def _from_model(
    model: Policy, source: str, base_dir: Path, stack: tuple[Path, ...]
) -> _layering.Layered:
    if not model.extends:
        return _layering.root(model, source)
    parents: list[_layering.Layered] = []
    for index, entry in enumerate(model.extends):
        target = Path(entry).expanduser()
        target = target if target.is_absolute() else base_dir / target
        if not target.is_file():
            raise PolicyError(
                f"extends[{index}]: parent policy {entry!r} not found",
                rule=f"extends[{index}]",
                path=source,
                detail=f"looked for {target}",
            )
        parents.append(_load_file(target, stack))
    base = parents[0]
    for other in parents[1:]:
        base = _layering.combine(base, other)
    return _layering.refine(base, model, source)


def field_path(loc: tuple[int | str, ...]) -> str:
    """``('trust', 'signers', 1, 'sigstore', 'issuer')`` -> ``trust.signers[1].issuer``."""
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _UNION_TAGS and i > 0 and isinstance(loc[i - 1], int):
            continue
        else:
            out += f".{part}" if out else part
    return out


def _validation_error(exc: ValidationError, source: str) -> PolicyError:
    lines = []
    for err in exc.errors():
        where = field_path(err["loc"]) or "(document)"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        if err["type"] not in ("extra_forbidden", "missing"):
            got = repr(err.get("input"))
            msg += f" (got {got[:60]}{'...' if len(got) > 60 else ''})"
        lines.append(f"{where}: {msg}")
    first_loc = field_path(exc.errors()[0]["loc"]) or None
    more = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
    return PolicyError(
        f"invalid policy: {lines[0]}{more}", rule=first_loc, path=source, detail="; ".join(lines)
    )
