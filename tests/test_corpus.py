"""The shared corpus: every malicious sample refused without running, every benign one read
bit-identically to its format's reference reader.

Sample names are taken from the generator's registry at collection time so each sample is its
own test id; the files themselves come from the session ``corpus`` fixture (built fresh per
run). References (``torch.load(weights_only=True)``, ``numpy.load``, ``safetensors``) run only
on benign files, only after safeload has read them under ``no_torch_load``.
"""

from __future__ import annotations

import collections
import importlib.util
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import safeload
from safeload.policy import FormatsPolicy

torch = pytest.importorskip("torch")

_GEN = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "make_corpus.py"


def _generator() -> Any:
    if not _GEN.exists():
        return None
    spec = importlib.util.spec_from_file_location("_safeload_make_corpus", _GEN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


_MAKE = _generator()
_SAMPLES: list[dict[str, Any]] = list(_MAKE.SAMPLES) if _MAKE is not None else []
MALICIOUS = [s["file"] for s in _SAMPLES if s["label"] == "malicious"]
BENIGN = [s["file"] for s in _SAMPLES if s["label"] == "benign"]

# Benign samples safeload refuses on purpose (the test then asserts a clean refusal instead).
REFUSED_BENIGN = {
    "jl_numpy_arrays.joblib": "joblib (NumpyArrayWrapper) is refused by name",
}
# Benign samples the pickle allowlist does not cover yet: a clean refusal is an expected failure,
# and once the allowlist grows they must load bit-exactly like the rest.
NOT_YET: dict[str, str] = {}

# Raw pickles are not in the default policy's formats.allowed: benign ones are loaded under an
# explicit policy that adds "pickle" (the default's refusal is tested below).
ALLOW_PICKLE = safeload.Policy(formats=FormatsPolicy(allowed=(*FormatsPolicy().allowed, "pickle")))
_RAW_PICKLE_FORMATS = ("raw_pickle", "joblib (zlib)")

# Plain pickles: the values make_corpus.py pickled (built here, never by unpickling).
_PLAIN = {
    "name": "vocab",
    "ids": list(range(20)),
    "pair": (1, "a"),
    "pi": 3.14159,
    "none": None,
    "nested": [{"k": [1, 2]}, True],
}
PLAIN_EXPECTED: dict[str, Any] = {
    **{f"plain_containers_p{p}.pkl": _PLAIN for p in (0, 2, 4, 5)},
    "plain_ordereddict_p2.pkl": collections.OrderedDict([("a", 1), ("b", [2, 3])]),
    "plain_set_bytes_p2.pkl": {"s": {1, 2}, "fs": frozenset([3]), "b": b"\x00\x01bytes"},
    "jl_compressed.joblib": {"a": [1, 2, 3], "b": "x"},  # zlib-wrapped plain pickle
}

# Files torch.load(weights_only=True) cannot read itself: the expected value is rebuilt with
# the generator's own deterministic constructor instead of unpickling anything.
BUILT_EXPECTED: dict[str, Any] = {
    "torch_save_proto4.pt": lambda: _MAKE.small_sd(),  # torch rejects protocol 4's FRAME
    "numpy_in_torch.pt": lambda: {"np": np.arange(5, dtype=np.float32), "w": torch.ones(2)},
    "plain_pickle_of_tensor.pkl": lambda: {"t": torch.arange(4.0)},  # what make_corpus pickled
}


def _entry(corpus: Any, fname: str) -> tuple[dict[str, Any], Path]:
    for s in corpus.manifest:
        if s["file"] == fname:
            return s, corpus.root / s["path"]
    pytest.skip(f"{fname} was not built (optional dependency missing)")


@pytest.mark.parametrize("fname", MALICIOUS)
def test_malicious_refused(corpus: Any, fname: str, no_torch_load: None) -> None:
    sample, path = _entry(corpus, fname)
    marker = Path(sample["marker"])
    assert marker.parent == corpus.markers
    with pytest.raises(safeload.RefusedError) as info:
        safeload.load(path)
    assert isinstance(info.value, safeload.SafeloadError)
    with pytest.raises(safeload.RefusedError):
        safeload.load(path, framework="numpy")
    with pytest.raises(safeload.RefusedError):
        safeload.formats.analyze(path.read_bytes(), name=fname)
    assert not marker.exists(), "the payload ran"


def _reference(sample: dict[str, Any], path: Path) -> Any:
    fmt = sample["format"]
    if sample["file"] in BUILT_EXPECTED:
        return BUILT_EXPECTED[sample["file"]]()
    if fmt.startswith("torch"):
        with warnings.catch_warnings():  # torch warns about pickle protocols other than 2
            warnings.simplefilter("ignore")
            return torch.load(path, weights_only=True)
    if fmt == "numpy_npy":
        return np.load(path, allow_pickle=False)
    if fmt == "numpy_npz":
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    if fmt == "safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    if sample["file"] in PLAIN_EXPECTED:
        return PLAIN_EXPECTED[sample["file"]]
    raise AssertionError(f"no reference for {sample['file']} ({fmt})")


def _storage_groups(value: Any) -> list[list[str]]:
    """Which tensors share a storage, as groups of names (for checking sharing is kept)."""
    groups: dict[int, list[str]] = {}

    def walk(v: Any, name: str) -> None:
        if isinstance(v, torch.Tensor):
            if v.numel():
                groups.setdefault(v.untyped_storage().data_ptr(), []).append(name)
        elif isinstance(v, dict):
            for k, c in v.items():
                walk(c, f"{name}.{k}")
        elif isinstance(v, (list, tuple)):
            for i, c in enumerate(v):
                walk(c, f"{name}.{i}")

    walk(value, "")
    return sorted(sorted(g) for g in groups.values())


def _to_numpy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        t = value.detach()
        if t.dtype == torch.bfloat16:
            import ml_dtypes

            return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return t.numpy()
    if isinstance(value, dict):
        return type(value)((k, _to_numpy(v)) for k, v in value.items())
    if isinstance(value, list):
        return [_to_numpy(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_to_numpy(v) for v in value)
    return value


@pytest.mark.parametrize("fname", BENIGN)
def test_benign_loads_identically(
    corpus: Any, fname: str, no_torch_load: None, monkeypatch: pytest.MonkeyPatch, assert_same: Any
) -> None:
    sample, path = _entry(corpus, fname)
    policy = ALLOW_PICKLE if sample["format"] in _RAW_PICKLE_FORMATS else None
    if fname in REFUSED_BENIGN:
        with pytest.raises(safeload.RefusedError):
            safeload.load(path, policy=ALLOW_PICKLE)
        pytest.xfail(REFUSED_BENIGN[fname])
    try:
        got = safeload.load(path, policy=policy)
    except safeload.RefusedError:
        if fname not in NOT_YET:
            raise
        pytest.xfail(NOT_YET[fname])
    if "quantized" in fname:  # NumPy has no quantized dtype: refused, never silently int8
        with pytest.raises(safeload.UnsupportedFormatError):
            safeload.load(path, framework="numpy", policy=policy)
        got_np = None
    else:
        got_np = safeload.load(path, framework="numpy", policy=policy)
    monkeypatch.undo()  # the reference readers may now run, on this benign file only
    want = _reference(sample, path)
    assert_same(got, want)
    if sample["format"].startswith("torch"):
        assert _storage_groups(got) == _storage_groups(want)
        if "dtype_device" not in fname and "quantized" not in fname:
            assert_same(got_np, _to_numpy(want))


def test_corpus_covers_every_family(corpus: Any) -> None:
    """The generator still writes what this file parametrises over (catches a renamed file)."""
    built = {s["file"] for s in corpus.manifest}
    optional = {s["file"] for s in _SAMPLES if "joblib" in s["format"]}
    assert set(MALICIOUS + BENIGN) - built <= optional


@pytest.mark.parametrize("fname", [f for f in BENIGN if f.endswith(".pkl")])
def test_raw_pickle_is_refused_by_the_default_policy(corpus: Any, fname: str) -> None:
    _, path = _entry(corpus, fname)
    with pytest.raises(safeload.PolicyViolation) as info:
        safeload.load(path)
    assert info.value.rule == "formats.allowed"
    assert "pickle" in str(info.value)
