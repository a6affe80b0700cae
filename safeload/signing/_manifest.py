"""The OMS in-toto statement: build it from digests, parse it back from a verified payload.

Two predicate versions are read. v1.0 (``https://model_signing/signature/v1.0``) lists every
file (or file shard) as a resource with its digest and records how the folder was serialised;
the subject digest is SHA-256 over the resource digests in the order listed. The legacy
``https://model_signing/Digests/v0.1`` (model_signing 0.2) lists files as subjects directly.

Parsing happens only after the DSSE signature checked out, but it is still strict: every
field is type-checked, every name must be a clean relative path (a signed ``../x`` is
refused, not resolved), hash types come from an allowlist, and duplicates are refused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Literal

from safeload.errors import SafeloadError, VerificationError
from safeload.source import check_relative_name

__all__ = [
    "DEFAULT_SHARD_SIZE",
    "PAYLOAD_TYPE",
    "PREDICATE_LEGACY",
    "PREDICATE_V1",
    "STATEMENT_TYPE",
    "Manifest",
    "Resource",
    "Serialization",
    "build_statement",
    "parse_statement",
    "resource_sort_key",
    "split_shard_name",
]

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_V1 = "https://model_signing/signature/v1.0"
PREDICATE_LEGACY = "https://model_signing/Digests/v0.1"
DEFAULT_SHARD_SIZE = 256 << 20
"""Shard size safeload signs with. model_signing defaults to 1,000,000,000 bytes; smaller shards
balance one big file over more cores (a 2 GiB file is 8 work items, not 3), at the cost of a
longer (still small) resource list. Verification always uses the size the signature records."""

HashType = Literal["sha256", "blake3"]
Method = Literal["files", "shards"]
_HASH_TYPES: dict[str, int] = {"sha256": 32, "blake3": 32}
"""Allowed content hashes and their digest sizes; anything else is refused."""


@dataclass(frozen=True, slots=True)
class Serialization:
    """How a folder was turned into resources; signed, so the verifier can redo it."""

    method: Method = "files"
    hash_type: HashType = "sha256"
    allow_symlinks: bool = False
    ignore_paths: tuple[str, ...] = ()
    shard_size: int | None = None

    @property
    def resource_algorithm(self) -> str:
        """The per-resource ``algorithm`` string model_signing writes for this method."""
        if self.method == "shards":
            return f"{self.hash_type}-sharded-{self.shard_size}"
        return self.hash_type

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "method": self.method,
            "hash_type": self.hash_type,
            "allow_symlinks": self.allow_symlinks,
        }
        if self.method == "shards":
            out["shard_size"] = self.shard_size
        if self.ignore_paths:
            out["ignore_paths"] = list(self.ignore_paths)
        return out


@dataclass(frozen=True, slots=True)
class Resource:
    """One signed file (``files``) or file shard (``shards``: ``name:start:end``)."""

    name: str
    algorithm: str
    digest: bytes


def split_shard_name(name: str) -> tuple[str, int, int]:
    """``"dir/a:b.bin:0:100"`` -> ``("dir/a:b.bin", 0, 100)``; names may contain ``:``."""
    path, sep1, rest = name.rpartition(":")
    path, sep2, start_s = path.rpartition(":")
    if not (sep1 and sep2) or not start_s.isdigit() or not rest.isdigit():
        raise VerificationError(f"malformed shard resource name {name!r}", rule="oms.resources")
    start, end = int(start_s), int(rest)
    if end < start or (end == start and start != 0):
        raise VerificationError(f"empty or inverted shard {name!r}", rule="oms.resources")
    return path, start, end


def resource_sort_key(name: str, method: Method) -> tuple[Any, ...]:
    """Canonical order: by path components (as model_signing sorts paths), then shard start."""
    if method == "shards":
        path, start, end = split_shard_name(name)
        return (PurePosixPath(path).parts, start, end)
    return (PurePosixPath(name).parts, 0, 0)


@dataclass(frozen=True, slots=True)
class Manifest:
    """What a signature says the model folder contains."""

    model_name: str
    serialization: Serialization
    resources: tuple[Resource, ...]
    legacy: bool = False
    """True for the v0.1 predicate, which has no subject digest and no serialization."""

    @property
    def root_digest(self) -> bytes:
        """The OMS subject digest: SHA-256 over the resource digests in order."""
        h = hashlib.sha256()
        for r in self.resources:
            h.update(r.digest)
        return h.digest()

    def digests(self) -> dict[str, bytes]:
        return {r.name: r.digest for r in self.resources}

    def file_names(self) -> set[str]:
        """The files (not shards) this manifest covers."""
        if self.serialization.method == "shards":
            return {split_shard_name(r.name)[0] for r in self.resources}
        return {r.name for r in self.resources}


def build_statement(manifest: Manifest) -> bytes:
    """The v1.0 in-toto statement (JSON bytes) signed as the DSSE payload."""
    resources = sorted(
        manifest.resources,
        key=lambda r: resource_sort_key(r.name, manifest.serialization.method),
    )
    ordered = Manifest(manifest.model_name, manifest.serialization, tuple(resources))
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": manifest.model_name, "digest": {"sha256": ordered.root_digest.hex()}}],
        "predicateType": PREDICATE_V1,
        "predicate": {
            "serialization": manifest.serialization.to_json(),
            "resources": [
                {"name": r.name, "algorithm": r.algorithm, "digest": r.digest.hex()}
                for r in resources
            ],
        },
    }
    return json.dumps(statement, indent=2, ensure_ascii=False).encode("utf-8")


def _fail(msg: str, rule: str = "oms.statement") -> VerificationError:
    return VerificationError(f"malformed OMS statement: {msg}", rule=rule)


def _obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(f"{what} is not an object")
    return value


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise _fail(f"{what} is not a string")
    return value


def _hex_digest(value: Any, size: int, what: str) -> bytes:
    text = _str(value, what)
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise _fail(f"{what} is not hex") from None
    if len(raw) != size or text != text.lower():
        raise _fail(f"{what} is not a {size}-byte lowercase hex digest")
    return raw


def _checked_name(name: str, method: Method) -> str:
    try:
        check_relative_name(split_shard_name(name)[0] if method == "shards" else name,
                            what="signed resource")
    except SafeloadError as exc:
        raise VerificationError(exc.message, rule="oms.resources") from None
    return name


def parse_statement(payload: bytes) -> Manifest:
    """Parse a verified DSSE payload into a :class:`Manifest`; raise ``VerificationError``."""
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _fail(f"not JSON ({exc})") from None
    doc = _obj(doc, "statement")
    if doc.get("_type") != STATEMENT_TYPE:
        raise _fail(f"_type is {doc.get('_type')!r}, expected {STATEMENT_TYPE}")
    predicate_type = doc.get("predicateType")
    subjects = doc.get("subject")
    if not isinstance(subjects, list) or not subjects:
        raise _fail("subject is not a non-empty list")
    if predicate_type == PREDICATE_LEGACY:
        return _parse_legacy(subjects)
    if predicate_type != PREDICATE_V1:
        raise _fail(f"unknown predicateType {predicate_type!r}", rule="oms.predicate_type")
    if len(subjects) != 1:
        raise _fail("expected exactly one subject")
    subject = _obj(subjects[0], "subject[0]")
    model_name = _str(subject.get("name"), "subject[0].name")
    expected_root = _hex_digest(_obj(subject.get("digest"), "subject[0].digest").get("sha256"),
                                32, "subject[0].digest.sha256")
    predicate = _obj(doc.get("predicate"), "predicate")
    serialization = _parse_serialization(_obj(predicate.get("serialization"),
                                              "predicate.serialization"))
    raw_resources = predicate.get("resources")
    if not isinstance(raw_resources, list):
        raise _fail("predicate.resources is not a list")
    size = _HASH_TYPES[serialization.hash_type]
    resources: list[Resource] = []
    seen: set[str] = set()
    for i, item in enumerate(raw_resources):
        res = _obj(item, f"resources[{i}]")
        name = _checked_name(_str(res.get("name"), f"resources[{i}].name"), serialization.method)
        algorithm = _str(res.get("algorithm"), f"resources[{i}].algorithm")
        if algorithm != serialization.resource_algorithm:
            raise _fail(f"resources[{i}].algorithm {algorithm!r} does not match the "
                        f"serialization ({serialization.resource_algorithm!r})")
        if name in seen:
            raise _fail(f"resource {name!r} listed twice")
        seen.add(name)
        resources.append(Resource(name, algorithm, _hex_digest(res.get("digest"), size,
                                                               f"resources[{i}].digest")))
    manifest = Manifest(model_name, serialization, tuple(resources))
    if manifest.root_digest != expected_root:
        raise VerificationError(
            "OMS statement is inconsistent: resources do not hash to the subject digest",
            rule="oms.subject",
        )
    return manifest


def _parse_serialization(ser: dict[str, Any]) -> Serialization:
    method = ser.get("method")
    if method not in ("files", "shards"):
        raise _fail(f"serialization.method {method!r} is not files or shards")
    hash_type = ser.get("hash_type")
    if hash_type not in _HASH_TYPES:
        raise _fail(f"serialization.hash_type {hash_type!r} is not allowed")
    allow_symlinks = ser.get("allow_symlinks", False)
    if not isinstance(allow_symlinks, bool):
        raise _fail("serialization.allow_symlinks is not a boolean")
    shard_size = None
    if method == "shards":
        shard_size = ser.get("shard_size")
        if not isinstance(shard_size, int) or isinstance(shard_size, bool) or shard_size <= 0:
            raise _fail("serialization.shard_size is not a positive integer")
    raw_ignore = ser.get("ignore_paths", [])
    if not isinstance(raw_ignore, list) or not all(isinstance(p, str) for p in raw_ignore):
        raise _fail("serialization.ignore_paths is not a list of strings")
    return Serialization(method, hash_type, allow_symlinks, tuple(raw_ignore), shard_size)


def _parse_legacy(subjects: list[Any]) -> Manifest:
    resources: list[Resource] = []
    seen: set[str] = set()
    for i, item in enumerate(subjects):
        sub = _obj(item, f"subject[{i}]")
        name = _checked_name(_str(sub.get("name"), f"subject[{i}].name"), "files")
        digest = _hex_digest(_obj(sub.get("digest"), f"subject[{i}].digest").get("sha256"), 32,
                             f"subject[{i}].digest.sha256")
        if name in seen:
            raise _fail(f"subject {name!r} listed twice")
        seen.add(name)
        resources.append(Resource(name, "sha256", digest))
    resources.sort(key=lambda r: resource_sort_key(r.name, "files"))
    return Manifest("compat-undefined-not-present", Serialization(), tuple(resources), legacy=True)
