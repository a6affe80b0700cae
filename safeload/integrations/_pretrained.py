"""``safeload.from_pretrained``: a Hugging Face model folder, loaded as data only.

``transformers.from_pretrained`` may import Python files shipped with a model
(``trust_remote_code``) and, for ``.bin`` weights, hands the bytes to ``torch.load``. Here the
folder is only ever *read*: ``config.json`` and the shard index are parsed as JSON, weights
go through :func:`safeload.load`, and code that a folder ships (``*.py`` files, an
``auto_map`` in ``config.json``) is ignored and audited, never imported. The model class is
the caller's own import; the folder can only choose which of the caller's classes'
*config values* are used, never which code runs.

When the policy requires signatures (or ``verify=True``) the folder is verified first and
every byte read afterwards (config, index, weights) comes from the ``VerifiedModel``'s
in-memory copies, so nothing is re-opened after it was hashed.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from safeload.errors import (
    FormatError,
    PolicyViolation,
    SourceError,
    UsageError,
    VerificationError,
)
from safeload.integrations._load import load
from safeload.policy import Policy, effective_policy
from safeload.signing import VerifiedModel
from safeload.source import check_relative_name, list_model_files, parse_hf_ref, resolve_hf_ref

__all__ = ["PretrainedState", "from_pretrained"]

logger = logging.getLogger(__name__)

_CONFIG = "config.json"
# The order transformers searches a folder in: safetensors first, a single file before an index.
_WEIGHT_CHOICES = (
    ("model.safetensors", "model.safetensors.index.json"),
    ("pytorch_model.bin", "pytorch_model.bin.index.json"),
)
# JSON side files are small; a multi-GB "config.json" is an attack on the parser, not a config.
_MAX_JSON_BYTES = 64 << 20
_HF_REPO_PREFIXES = ("models--", "datasets--", "spaces--")
# Config keys that name an implementation transformers loads by name; a built-in name is a
# plain identifier ("sdpa", "flash_attention_2", "paged|eager"), a Hub kernel has a "/".
_IMPLEMENTATION_KEYS = frozenset({
    "attn_implementation", "_attn_implementation", "_attn_implementation_internal",
    "experts_implementation", "_experts_implementation", "_experts_implementation_internal",
})
_VARIANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_BUILTIN_IMPL = re.compile(r"^[a-z0-9_]+(\|[a-z0-9_]+)?$")


@dataclass(frozen=True, slots=True)
class PretrainedState:
    """What a folder holds when no model class is given: merged weights plus the config."""

    state_dict: dict[str, Any]
    """Every tensor of every shard, by name (torch tensors, or NumPy arrays for numpy)."""
    config: dict[str, Any]
    """``config.json`` as plain JSON (``auto_map`` removed), ``{}`` when the folder has none."""
    root: str
    """The folder that was read (for a cache reference, its snapshot folder)."""
    weight_files: tuple[str, ...]
    """The weight files loaded, relative to ``root``, in load order."""
    verified: VerifiedModel | None = field(default=None, repr=False)
    """The verification result when the folder was verified first."""
    ignored_code: tuple[str, ...] = ()
    """Code the folder ships that was ignored (``*.py`` files, ``config.json:auto_map``)."""


# -- where the bytes come from ----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Folder:
    """A model folder's files: verified in-memory copies, or checked paths of a listing."""

    root: Path
    sources: Mapping[str, Any]
    """Relative name -> what ``safeload.load`` gets (a ``VerifiedFile`` or a checked path)."""
    verified: VerifiedModel | None
    prefix: str = ""
    """``"sub/"`` when this is a subfolder view: names are relative to it, signatures are not."""

    def sub(self, subfolder: str) -> _Folder:
        check_relative_name(subfolder, what="subfolder")
        cut = subfolder + "/"
        inside = {n[len(cut):]: v for n, v in self.sources.items() if n.startswith(cut)}
        return _Folder(self.root / subfolder, inside, self.verified, self.prefix + cut)

    def read_json(self, name: str) -> Any:
        source = self.sources[name]
        if self.verified is not None:
            data = bytes(source.buffer())
        else:
            try:
                with open(source, "rb") as fh:  # noqa: PTH123 - a bounded read of a listed file
                    data = fh.read(_MAX_JSON_BYTES + 1)
            except OSError as exc:
                raise SourceError(f"cannot read {name}", path=str(source), rule="source.read",
                                  detail=str(exc)) from None
        if len(data) > _MAX_JSON_BYTES:
            raise FormatError(f"{name} is larger than {_MAX_JSON_BYTES} bytes",
                              path=str(self.root / name), rule="pretrained.json")
        try:
            return json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise FormatError(f"{name} is not valid JSON", path=str(self.root / name),
                              rule="pretrained.json", detail=str(exc)[:200]) from None


def _is_hf_snapshot(folder: Path) -> bool:
    parent = folder.absolute().parent
    return parent.name == "snapshots" and parent.parent.name.startswith(_HF_REPO_PREFIXES)


def _check_repo(repo: str, policy: Policy) -> None:
    allowed = policy.sources.allowed_repos
    if allowed is not None and not any(fnmatch.fnmatchcase(repo, p) for p in allowed):
        error = PolicyViolation(f"repo {repo!r} is not an allowed source",
                                rule="sources.allowed_repos", detail=", ".join(allowed) or "none")
        if policy.mode != "audit":
            raise error
        logger.warning("%s (audit mode: continuing)", error)


def _resolve(path_or_ref: str | os.PathLike[str], revision: str | None, policy: Policy,
             cache_dir: str | os.PathLike[str] | None) -> Path:
    """The folder to read: a local folder, or the cache snapshot a reference names."""
    text = os.fspath(path_or_ref)
    if Path(text).is_dir():
        if revision is not None:
            raise UsageError("revision applies to a Hugging Face reference, not a folder",
                             path=text, rule="pretrained.revision")
        folder = Path(text)
        if _is_hf_snapshot(folder):  # a snapshot given by path still names its repo
            repo_dir = folder.absolute().parent.parent.name
            _check_repo(repo_dir.partition("--")[2].replace("--", "/"), policy)
        return folder
    if os.path.lexists(text) or "/" not in text or text.startswith((".", "/")):
        raise SourceError("not a model folder or a Hugging Face reference", path=text,
                          rule="source.folder")
    if revision is not None:
        if "@" in text:
            raise UsageError("give the revision once: in the reference or as revision=",
                             path=text, rule="pretrained.revision")
        text = f"{text}@{revision}"
    repo, _ = parse_hf_ref(text)
    _check_repo(repo, policy)
    return resolve_hf_ref(text, cache_dir=cache_dir,
                          require_revision=policy.sources.require_revision)


def _check_snapshot(folder: Path) -> None:
    """A snapshot folder is a real folder of its repo; as a link elsewhere it escapes the
    repo folder, and every "inside the repo" link check after it would be moot."""
    if not _is_hf_snapshot(folder):
        return
    repo_dir = folder.absolute().parent.parent.resolve()
    target = folder.resolve()
    if not target.is_relative_to(repo_dir):
        raise SourceError("cache snapshot points outside its repo folder", path=str(folder),
                          rule="trust.allow_symlinks", detail=f"target {target}")


def _open_folder(folder: Path, policy: Policy, *, verify: bool) -> _Folder:
    _check_snapshot(folder)
    # A cache snapshot is a symlink farm into ../../blobs; list_model_files follows such links
    # only when they stay inside the same repo folder. Elsewhere the policy decides.
    snapshot = _is_hf_snapshot(folder)
    if verify:
        from safeload.signing import verify as verify_model

        if not snapshot:
            verified = verify_model(folder, policy=policy)
        else:
            # The same link rule for verification: links only within the repo folder.
            trust = policy.trust.model_copy(update={"allow_symlinks": True})
            verified = verify_model(folder, policy=policy.model_copy(update={"trust": trust}))
        return _Folder(folder, dict(verified.files), verified)
    allow_links = policy.trust.allow_symlinks or snapshot
    entries = list_model_files(folder, allow_symlinks=allow_links)
    return _Folder(folder, {e.name: str(e.path) for e in entries}, None)


# -- code a folder ships -----------------------------------------------------------------------
def _code_refs(config: dict[str, Any]) -> list[str]:
    """Remove, anywhere in ``config`` (sub-configs too), what makes transformers fetch or
    import code: ``auto_map`` (the folder's own modules), an attention or experts
    implementation that is not one of transformers' built-in names (``org/kernel`` pulls a
    compiled kernel from the Hub), and ``use_pretrained_backbone`` (weights fetched by name).
    Returns a description of each removal."""
    removed: list[str] = []
    stack: list[tuple[str, dict[str, Any]]] = [("", config)]
    while stack:
        where, node = stack.pop()
        for key in list(node):
            value = node[key]
            if key == "auto_map" or (key in _IMPLEMENTATION_KEYS and not (
                    value is None or (isinstance(value, str) and _BUILTIN_IMPL.match(value)))):
                del node[key]
                text = json.dumps(value, sort_keys=True, default=str)[:200]
                removed.append(f"{_CONFIG}:{where}{key}={text}")
            elif key == "use_pretrained_backbone" and value is not False:
                # Building the model would fetch backbone weights by name (from the Hub or
                # timm), outside this folder and its verification; the folder's weights win.
                node[key] = False
                removed.append(f"{_CONFIG}:{where}{key}={json.dumps(value, default=str)[:50]}")
            elif isinstance(value, dict):
                stack.append((f"{where}{key}.", value))
    return sorted(removed)


def _ignore_code(folder: _Folder, config: dict[str, Any], policy: Policy) -> tuple[str, ...]:
    """Drop code references from ``config`` and record every piece of shipped code ignored."""
    ignored = sorted(n for n in folder.sources if n.endswith(".py"))
    ignored += _code_refs(config)
    if folder.verified is not None:
        unsigned = folder.verified.signer_ignored
        ignored += [f"{n} (not signed)" for n in unsigned if n.endswith(".py")]
    if ignored:
        from safeload.integrations._patch import audit_event

        logger.warning("ignored code shipped with %s (never imported): %s", folder.root,
                       ", ".join(ignored))
        audit_event("ignored_code", policy, level=logging.WARNING, path=str(folder.root),
                    ignored=ignored)
    return tuple(ignored)


# -- weights ----------------------------------------------------------------------------------
def _weight_plan(folder: _Folder, *, variant: str | None, use_safetensors: bool | None
                 ) -> tuple[list[str], dict[str, str] | None]:
    """The weight files to load and, for a sharded checkpoint, its tensor -> shard map."""
    if variant is not None and not _VARIANT.match(str(variant)):
        raise UsageError(f"not a weights variant: {variant!r}", rule="pretrained.variant")
    choices = [pair for pair in _WEIGHT_CHOICES
               if use_safetensors is None or pair[0].endswith(".safetensors") == use_safetensors]
    if variant:
        choices = [(_with_variant(single, variant), _with_variant(index, variant))
                   for single, index in choices]
    for single, index in choices:
        if single in folder.sources:
            return [single], None
        if index in folder.sources:
            return _read_index(folder, index)
    raise SourceError("no weights in the model folder", path=str(folder.root),
                      rule="pretrained.weights",
                      detail="expected " + ", ".join(n for pair in choices for n in pair))


def _with_variant(name: str, variant: str) -> str:
    """transformers' spelling: model.fp16.safetensors, model.safetensors.index.fp16.json."""
    stem, _, ext = name.rpartition(".")
    return f"{stem}.{variant}.{ext}"


def _read_index(folder: _Folder, index: str) -> tuple[list[str], dict[str, str]]:
    where = str(folder.root / index)
    doc = folder.read_json(index)
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise FormatError("shard index has no weight_map", path=where, rule="pretrained.index")
    shards: dict[str, None] = {}
    for tensor, shard in weight_map.items():
        if not isinstance(shard, str):
            raise FormatError(f"shard of {tensor!r} is not a file name", path=where,
                              rule="pretrained.index")
        check_relative_name(shard, what="shard")
        if shard not in folder.sources:
            raise SourceError(f"shard {shard!r} listed in the index is missing", path=where,
                              rule="pretrained.index")
        if shard == index or not shard.endswith((".safetensors", ".bin")):
            raise FormatError(f"{shard!r} is not a weight file", path=where,
                              rule="pretrained.index")
        shards[shard] = None
    return sorted(shards), dict(weight_map)


def _load_weights(folder: _Folder, files: list[str], weight_map: dict[str, str] | None, *,
                  policy: Policy | str | os.PathLike[str] | None,
                  framework: Literal["torch", "numpy"],
                  map_location: Any, sandbox: bool | None) -> dict[str, Any]:
    """One state dict over every shard; a name in two shards is refused, not overwritten."""
    import numpy as np

    merged: dict[str, Any] = {}
    owner: dict[str, str] = {}
    for name in files:
        where = str(folder.root / name)
        value = load(folder.sources[name], map_location, policy=policy, framework=framework,
                     sandbox=sandbox)
        if not isinstance(value, Mapping):
            raise FormatError("weight file does not hold a state dict", path=where,
                              rule="pretrained.state_dict", detail=type(value).__name__)
        for key, tensor in value.items():
            if not isinstance(key, str) or not (isinstance(tensor, np.ndarray)
                                               or _is_torch_tensor(tensor)):
                raise FormatError("weight file holds something other than named tensors",
                                  path=where, rule="pretrained.state_dict", detail=repr(key)[:80])
            if key in merged:
                raise FormatError(f"tensor {key!r} appears in two weight files", path=where,
                                  rule="pretrained.duplicate_tensor",
                                  detail=f"also in {owner[key]}")
            if weight_map is not None and weight_map.get(key) != name:
                raise FormatError(f"tensor {key!r} is not where the shard index puts it",
                                  path=where, rule="pretrained.index",
                                  detail=f"index says {weight_map.get(key)!r}")
            merged[key] = tensor
            owner[key] = name
    if weight_map is not None and (absent := sorted(set(weight_map) - set(merged))):
        raise FormatError("tensors listed in the shard index are missing from the shards",
                          path=str(folder.root), rule="pretrained.index",
                          detail=", ".join(absent[:10]))
    return merged


def _is_torch_tensor(value: object) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


# -- building a transformers model -------------------------------------------------------------
def _make_config(cls: type[Any], config: dict[str, Any], overrides: dict[str, Any], root: str
                 ) -> Any:
    """The caller's class's config, filled from ``config.json`` values (JSON only, no code)."""
    config_cls = None if hasattr(cls, "_model_mapping") else getattr(cls, "config_class", None)
    if config_cls is None:  # an Auto class: config.json's model_type picks transformers' own
        from transformers import CONFIG_MAPPING

        model_type = config.get("model_type")
        if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
            raise UsageError(f"config.json names no model type transformers ships: {model_type!r}",
                             path=root, rule="pretrained.model_type",
                             detail="safeload never runs model code from the folder; pass the "
                             "model class yourself")
        config_cls = CONFIG_MAPPING[model_type]
    try:
        return config_cls.from_dict({**config, **overrides})
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise FormatError("config.json does not fit the model's config class", path=root,
                          rule="pretrained.config", detail=str(exc)[:200]) from None


def _dtype(value: Any, config: Mapping[str, Any], root: str) -> Any:
    import torch

    if value is None or isinstance(value, torch.dtype):
        return value
    if value == "auto":
        value = config.get("dtype") or config.get("torch_dtype")
        if value is None:
            return None
    resolved = getattr(torch, str(value), None) if isinstance(value, str) else None
    if not isinstance(resolved, torch.dtype):
        raise UsageError(f"not a torch dtype: {value!r}", path=root, rule="pretrained.dtype")
    return resolved


def _align_prefix(state: dict[str, Any], expected: set[str], prefix: str) -> dict[str, Any]:
    """Add or strip the base-model prefix as transformers does (``bert.`` on a head model)."""
    if not prefix:
        return state
    dotted = prefix + "."
    has = any(k.startswith(dotted) for k in state)
    wants = any(k.startswith(dotted) for k in expected)
    if wants and not has:
        return {dotted + k: v for k, v in state.items()}
    if has and not wants:
        return {k.removeprefix(dotted): v for k, v in state.items()}
    return state


def _tie(model: Any, missing: list[str]) -> None:
    import inspect

    tie = getattr(model, "tie_weights", None)
    if not callable(tie):
        return
    if "missing_keys" in inspect.signature(tie).parameters:
        tie(missing_keys=set(missing))
    else:
        tie()


def _still_missing(model: Any, missing: list[str], loaded: set[str]) -> list[str]:
    """Missing keys that tying did not fill from a loaded tensor (``lm_head`` <- embeddings)."""
    tensors = dict(model.named_parameters(remove_duplicate=False))
    tensors.update(dict(model.named_buffers(remove_duplicate=False)))
    filled = {(t.data_ptr(), tuple(t.shape)) for k, t in tensors.items() if k in loaded}
    return [k for k in missing
            if k not in tensors or (tensors[k].data_ptr(), tuple(tensors[k].shape)) not in filled]


def _build_model(cls: type[Any], config_json: dict[str, Any], state: dict[str, Any], *,
                 root: str, config: Any = None, strict: bool = False,
                 output_loading_info: bool = False, dtype: Any = None, torch_dtype: Any = None,
                 **overrides: Any) -> Any:
    import copy

    import torch

    if config is None:
        model_config = _make_config(cls, config_json, overrides, root)
    else:  # the caller's own config object: used as given, plus the overrides
        model_config = copy.deepcopy(config)
        for key, value in overrides.items():
            setattr(model_config, key, value)
    wanted = _dtype(dtype if dtype is not None else torch_dtype, config_json, root)
    extra = {} if wanted is None else {"dtype": wanted}
    if hasattr(cls, "_model_mapping"):
        model = cls.from_config(model_config, trust_remote_code=False, **extra)
    elif callable(getattr(cls, "_from_config", None)):
        model = cls._from_config(model_config, **extra)
    else:
        model = cls(model_config)
    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"{cls.__name__} did not build a torch module", rule="pretrained.class")
    if wanted is not None:
        model.to(wanted)
    state = _align_prefix(state, set(model.state_dict()), getattr(model, "base_model_prefix", ""))
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches: torch reports them all in one message
        raise FormatError("weights do not fit the model", path=root, rule="pretrained.shapes",
                          detail=str(exc)[:500]) from None
    unexpected = list(result.unexpected_keys)
    missing = list(result.missing_keys)
    _tie(model, missing)
    missing = _still_missing(model, missing, set(state) - set(unexpected))
    if strict and (missing or unexpected):
        raise FormatError("weights do not match the model's parameters", path=root,
                          rule="pretrained.strict",
                          detail=f"missing: {missing[:10]}; unexpected: {unexpected[:10]}")
    if missing:
        logger.warning("%s: newly initialised (not in the checkpoint): %s", cls.__name__,
                       ", ".join(missing))
    if unexpected:
        logger.warning("%s: checkpoint tensors the model does not use: %s", cls.__name__,
                       ", ".join(unexpected))
    model.eval()
    if output_loading_info:
        return model, {"missing_keys": missing, "unexpected_keys": unexpected,
                       "mismatched_keys": [], "error_msgs": []}
    return model


# -- public API -------------------------------------------------------------------------------
# transformers.from_pretrained arguments that only steer downloading: safeload never downloads.
_DOWNLOAD_ONLY = frozenset({
    "local_files_only", "force_download", "resume_download", "proxies", "token",
    "use_auth_token", "code_revision", "_from_auto", "_from_pipeline", "_commit_hash",
})
# Loading features safeload does not implement: refused rather than silently ignored or, worse,
# set as config attributes.
_UNSUPPORTED = frozenset({
    "device_map", "low_cpu_mem_usage", "quantization_config", "load_in_8bit", "load_in_4bit",
    "offload_folder", "offload_state_dict", "offload_buffers", "max_memory", "tp_plan",
    "tp_size", "key_mapping", "gguf_file", "from_tf", "from_flax", "adapter_name",
    "adapter_kwargs", "state_dict", "weights_only", "use_kernels", "allow_all_kernels",
})


def _options(kwargs: dict[str, Any]) -> None:
    if kwargs.get("trust_remote_code"):
        raise UsageError("trust_remote_code is not supported", rule="pretrained.remote_code",
                         detail="safeload never imports code shipped with a model")
    kwargs.pop("trust_remote_code", None)
    for name in _DOWNLOAD_ONLY & kwargs.keys():
        del kwargs[name]
    if unsupported := sorted(_UNSUPPORTED & kwargs.keys()):
        raise UsageError(f"not supported by safeload.from_pretrained: {', '.join(unsupported)}",
                         rule="pretrained.kwargs",
                         detail="load the state, then apply these with transformers yourself")


def _read(path_or_ref: str | os.PathLike[str], *, policy: Policy | str | os.PathLike[str] | None,
          effective: Policy, verify: bool | None, revision: str | None,
          framework: Literal["torch", "numpy"], map_location: Any,
          options: dict[str, Any]) -> PretrainedState:
    """Everything up to (not including) building a model: resolve, verify, read, merge."""
    required = effective.trust.require_signature
    if verify is False and required:
        raise UsageError("verify=False, but the policy requires signatures",
                         rule="trust.require_signature")
    sandbox = options.get("sandbox")
    mode = effective.sandbox.mode
    if sandbox is True or (sandbox is None and (
        mode == "always" or (mode == "untrusted" and not (verify or required))
    )):  # fmt: skip
        # Every weight file will be parsed in a worker: start the fork server now, so it is
        # ready by the time resolving, hashing and config reading are done.
        from safeload.sandbox._runner import prewarm_quietly

        prewarm_quietly()
    root = _resolve(path_or_ref, revision, effective, options.pop("cache_dir", None))
    whole = _open_folder(root, effective, verify=bool(verify) or required)
    subfolder = options.pop("subfolder", None) or ""
    folder = whole.sub(subfolder) if subfolder else whole
    config: dict[str, Any] = {}
    if _CONFIG in folder.sources:
        doc = folder.read_json(_CONFIG)
        if not isinstance(doc, dict):
            raise FormatError("config.json is not a JSON object",
                              path=str(folder.root / _CONFIG), rule="pretrained.config")
        config = doc
    elif whole.verified is not None and folder.prefix + _CONFIG in whole.verified.signer_ignored:
        raise VerificationError("config.json is not covered by the signature",
                                path=str(folder.root / _CONFIG), rule="oms.files")
    ignored = _ignore_code(whole, config, effective)
    files, weight_map = _weight_plan(folder, variant=options.pop("variant", None),
                                     use_safetensors=options.pop("use_safetensors", None))
    state = _load_weights(folder, files, weight_map, policy=policy, framework=framework,
                          map_location=map_location, sandbox=options.pop("sandbox", None))
    return PretrainedState(state, config, str(folder.root), tuple(files), whole.verified,
                           ignored)


def from_pretrained(
    model_cls_or_name: type[Any] | str | None,
    path_or_ref: str | os.PathLike[str],
    *,
    policy: Policy | str | os.PathLike[str] | None = None,
    verify: bool | None = None,
    revision: str | None = None,
    framework: Literal["torch", "numpy"] = "torch",
    **kwargs: Any,
) -> Any:
    """Load a Hugging Face-style model folder without running anything it ships.

    ``path_or_ref`` is a local folder or a cached ``org/name[@revision]`` (never downloaded;
    ``cache_dir`` overrides ``HF_HUB_CACHE``); ``subfolder``, ``variant`` and
    ``use_safetensors`` pick files as in transformers; ``sandbox`` is passed to each
    ``safeload.load`` (``None``: the policy decides). With a transformers model class
    (``BertModel``, ``AutoModel``...) the model is built from ``config.json`` (or ``config=``,
    a config object) and filled with the folder's weights; ``strict=True`` refuses missing or
    unexpected keys, ``output_loading_info=True`` also returns them, ``dtype`` casts the model,
    ``map_location`` moves it, and other keyword arguments override config values as in
    transformers. With a string (or ``None``) for the class, a :class:`PretrainedState` is
    returned instead (``map_location`` then applies to its tensors).

    ``verify=None`` verifies exactly when the policy requires signatures; ``verify=False``
    under such a policy is refused. ``trust_remote_code=True`` is refused, and so are loading
    features safeload does not implement (``device_map``, quantization, ...).
    """
    _options(kwargs)
    if framework not in ("torch", "numpy"):
        raise UsageError(f"unknown framework {framework!r}", rule="load.framework")
    build = isinstance(model_cls_or_name, type)
    if build and framework != "torch":
        raise UsageError("building a model needs framework='torch'", rule="load.framework")
    map_location = kwargs.pop("map_location", None)
    got = _read(path_or_ref, policy=policy, effective=effective_policy(policy), verify=verify,
                revision=revision, framework=framework,
                map_location=None if build else map_location, options=kwargs)
    if not build:
        if kwargs:
            raise UsageError(f"unexpected arguments without a model class: {', '.join(kwargs)}",
                             rule="pretrained.kwargs")
        return got
    assert isinstance(model_cls_or_name, type)
    model = _build_model(model_cls_or_name, got.config, got.state_dict, root=got.root, **kwargs)
    if map_location is not None:
        (model[0] if isinstance(model, tuple) else model).to(map_location)
    return model
