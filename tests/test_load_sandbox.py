"""``safeload.load(..., sandbox=...)``: the policy decides where parsing happens, ``True``
forces the worker, ``False`` is refused before reading when the policy requires the sandbox.

Each test starts a real worker (about a second each on a busy machine), so the corpus part
uses a few malicious samples of each family, not all of them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

import safeload
from safeload.policy import FormatsPolicy, Policy, SandboxPolicy

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox worker needs Linux")

ALWAYS = Policy(sandbox=SandboxPolicy(mode="always"))
ALWAYS_WITH_PICKLE = Policy(
    sandbox=SandboxPolicy(mode="always"),
    formats=FormatsPolicy(allowed=(*FormatsPolicy().allowed, "pickle")),
)


def _with_required(mode: str, layer: str) -> Policy:
    """A policy requiring ``layer``; a made-up name gets past the schema only this way, to
    show the worker's own check refuses it too (defence in depth)."""
    return Policy(sandbox=SandboxPolicy.model_construct(mode=mode, required_layers=(layer,)))


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "model.pt"
    lin = torch.nn.Linear(4, 3)
    torch.save(
        {
            "sd": lin.state_dict(),
            "half": torch.randn(5).half(),
            "bf16": torch.randn(2, 2).bfloat16(),
            "ids": torch.arange(6).reshape(2, 3)[:, 1:],
            "step": 7,
            "name": "run-1",
        },
        path,
    )
    return path


def test_policy_always_loads_bit_identical_to_in_process(
    ckpt: Path, assert_same: Any, no_torch_load: None
) -> None:
    in_process = safeload.load(ckpt)
    assert_same(safeload.load(ckpt, policy=ALWAYS), in_process)
    assert_same(safeload.load(ckpt.read_bytes(), policy=ALWAYS), in_process)  # via a sealed memfd
    got_np = safeload.load(ckpt, policy=ALWAYS, framework="numpy")
    assert_same(got_np, safeload.load(ckpt, framework="numpy"))


def test_legacy_checkpoint_and_plain_pickle_in_the_sandbox(
    tmp_path: Path, assert_same: Any
) -> None:
    import pickle

    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.arange(8.0)}, legacy, _use_new_zipfile_serialization=False)
    assert_same(safeload.load(legacy, sandbox=True), safeload.load(legacy))
    data = pickle.dumps({"t": torch.arange(4.0)}, protocol=2)  # embedded legacy storage
    assert_same(safeload.load(data, policy=ALWAYS_WITH_PICKLE), {"t": torch.arange(4.0)})


@pytest.mark.parametrize("layer", ["landlock", "no_such_layer"])
def test_required_layer_missing_is_a_sandbox_error_naming_it(ckpt: Path, layer: str) -> None:
    missing = [r.name for r in safeload.doctor().layers if not r.available]
    if layer == "landlock" and missing:
        layer = missing[0]  # a real layer this machine lacks
    elif layer == "landlock":
        pytest.skip("every sandbox layer is available here; the made-up name covers the check")
    with pytest.raises(safeload.SandboxError) as info:
        safeload.load(ckpt, policy=_with_required("always", layer))
    assert layer in str(info.value)
    assert info.value.rule == "sandbox.required_layers"


def test_untrusted_mode_sends_unverified_files_to_the_worker(ckpt: Path) -> None:
    # The made-up layer is only looked at by the worker: refusing proves the worker was asked.
    with pytest.raises(safeload.SandboxError):
        safeload.load(ckpt, policy=_with_required("untrusted", "no_such_layer"))
    assert safeload.load(ckpt, policy=_with_required("never", "no_such_layer"))["step"] == 7


def test_sandbox_false_is_refused_before_reading_when_the_policy_says_always() -> None:
    garbage = b"not a model at all"  # refused by policy, so never parsed (no FormatError)
    with pytest.raises(safeload.PolicyViolation) as info:
        safeload.load(garbage, policy=ALWAYS, sandbox=False)
    assert info.value.rule == "sandbox.mode"
    with pytest.raises(safeload.FormatError):
        safeload.load(garbage, sandbox=False)  # no policy asks for the sandbox: read, refused


def test_sandbox_false_in_audit_mode_loads_in_process_and_records(
    ckpt: Path, tmp_path: Path
) -> None:
    import json

    log = tmp_path / "audit.jsonl"
    policy = Policy(mode="audit", audit_log=str(log), sandbox=SandboxPolicy(mode="always"))
    assert safeload.load(ckpt, policy=policy, sandbox=False)["step"] == 7
    (record,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["rule"] for r in record["rules"]] == ["sandbox.mode"]


def test_sandbox_must_be_a_bool_or_none(ckpt: Path) -> None:
    with pytest.raises(safeload.UsageError):
        safeload.load(ckpt, sandbox="yes")  # type: ignore[arg-type]


_MALICIOUS_SAMPLE = [
    "p1_posix_system.pkl",
    "importlib_import_module.pkl",
    "tz_reduce_system.pt",
    "tz_build_setstate.pt",
    "legacy_main_payload.pt",
    "np_object_array.npy",
]


@pytest.mark.parametrize("fname", _MALICIOUS_SAMPLE)
def test_malicious_samples_are_refused_in_the_sandbox(corpus: Any, fname: str) -> None:
    entry = next((s for s in corpus.manifest if s["file"] == fname), None)
    if entry is None:
        pytest.skip(f"{fname} was not built")
    path = corpus.root / entry["path"]
    with pytest.raises(safeload.RefusedError) as info:
        safeload.load(path, policy=ALWAYS_WITH_PICKLE)
    assert not isinstance(info.value, safeload.PolicyViolation)  # the reader refused it
    assert (info.value.path or "").startswith(str(path))  # the caller's name, not the worker's
    assert not Path(entry["marker"]).exists(), "the payload ran"


@pytest.fixture
def verified(tmp_path: Path) -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec
    from test_signing_helpers import write_key

    from safeload.policy import KeySigner

    priv, pub = write_key(tmp_path / "k.pem", ec.generate_private_key(ec.SECP256R1()))
    root = tmp_path / "signed"
    root.mkdir()
    torch.save({"w": torch.arange(6.0).reshape(2, 3), "step": 3}, root / "model.pt")
    safeload.sign(root, method="key", private_key=priv)
    return lambda: safeload.verify(root, signers=[KeySigner(public_key=str(pub))])["model.pt"]


def test_a_verified_file_is_trusted_by_untrusted_mode(verified: Any, assert_same: Any) -> None:
    want = {"w": torch.arange(6.0).reshape(2, 3), "step": 3}
    # Verified: parsed in-process, so the worker's layer check never runs.
    assert_same(safeload.load(verified(), policy=_with_required("untrusted", "no_such")), want)
    # sandbox=True still uses the worker, fed a private copy of exactly the verified bytes.
    vf = verified()
    assert_same(safeload.load(vf, sandbox=True), want)
    with pytest.raises(safeload.SandboxError):
        safeload.load(verified(), policy=_with_required("always", "no_such"))


def test_quantized_tensors_come_back_exactly_from_the_worker(tmp_path: Path) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = torch.quantize_per_tensor(torch.randn(4), 0.5, 1, torch.qint8)
    path = tmp_path / "q.pt"
    torch.save({"q": q}, path)
    got = safeload.load(path, sandbox=True)["q"]
    assert got.is_quantized and (got.q_scale(), got.q_zero_point()) == (0.5, 1)
    assert torch.equal(got.int_repr(), q.int_repr())


def test_a_symlink_the_caller_names_is_followed_as_in_process(
    ckpt: Path, tmp_path: Path, assert_same: Any
) -> None:
    link = tmp_path / "link.pt"
    link.symlink_to(ckpt)
    assert_same(safeload.load(link, sandbox=True), safeload.load(ckpt))


@pytest.fixture
def big_ckpt(tmp_path: Path) -> Path:
    """Over the loader's 16 MiB pipeline threshold: read on every core with CRC hints."""
    path = tmp_path / "big.pt"
    torch.save({"a": torch.arange(3 << 20, dtype=torch.float32), "b": torch.ones(1 << 20)}, path)
    return path


def test_sandboxed_tensors_are_private_memory_like_an_in_process_load(
    big_ckpt: Path, assert_same: Any
) -> None:
    """The worker parses the caller's file, but the tensors are the parent's own copy: a later
    write to the file (same inode) does not reach them, as with ``torch.load``."""
    expected = safeload.load(big_ckpt)
    got = safeload.load(big_ckpt, sandbox=True)
    assert_same(got, expected)
    with big_ckpt.open("r+b") as f:  # zero the whole file in place
        f.write(b"\0" * big_ckpt.stat().st_size)
    assert_same(got, expected)
    got["a"][0] = 42.0  # and they are writable
    assert float(got["a"][0]) == 42.0


def test_mmap_true_in_the_sandbox_maps_like_an_in_process_mmap_load(
    big_ckpt: Path, assert_same: Any
) -> None:
    assert_same(safeload.load(big_ckpt, sandbox=True, mmap=True), safeload.load(big_ckpt))


def test_crc_hints_do_not_let_a_corrupt_member_through(big_ckpt: Path) -> None:
    """The parent folds member CRCs while reading and tells the worker; a hint only counts when
    it equals the directory's CRC, so flipped tensor bytes are still refused, on both paths."""
    raw = bytearray(big_ckpt.read_bytes())
    at = raw.index(bytes(torch.arange(4, dtype=torch.float32).numpy().tobytes()[4:12]))
    raw[at + 100] ^= 0xFF
    big_ckpt.write_bytes(bytes(raw))
    for mmap in (False, True):
        with pytest.raises(safeload.errors.FormatError) as info:
            safeload.load(big_ckpt, sandbox=True, mmap=mmap)
        assert info.value.rule == "zip.crc"


def test_bytes_and_file_objects_reach_the_worker_as_a_sealed_copy(
    big_ckpt: Path, assert_same: Any
) -> None:
    expected = safeload.load(big_ckpt)
    assert_same(safeload.load(big_ckpt.read_bytes(), sandbox=True), expected)
    with big_ckpt.open("rb") as f:
        assert_same(safeload.load(f, sandbox=True), expected)


def test_a_checkpoint_with_thousands_of_members_loads_in_the_sandbox(
    tmp_path: Path, assert_same: Any
) -> None:
    """Its CRC hints would not fit in the one request message: the biggest members keep
    theirs, the worker checks the rest by reading (it once refused: 'request too large')."""
    path = tmp_path / "many.pt"
    state = {f"t{i}": torch.full((2048,), float(i)) for i in range(3000)}
    state["big"] = torch.arange(1 << 20, dtype=torch.float32)
    torch.save(state, path)
    assert_same(safeload.load(path, sandbox=True), safeload.load(path))
