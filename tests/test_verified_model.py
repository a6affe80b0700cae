"""What verify returns is what gets loaded: later changes to the files never leak in."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from safetensors.numpy import load as st_load
from safetensors.numpy import save_file
from test_signing_helpers import write_key

import safeload
from safeload.policy import KeySigner
from safeload.signing import TrustSettings


@pytest.fixture
def signed(tmp_path: Path) -> tuple[Path, KeySigner, dict[str, np.ndarray]]:
    priv, pub = write_key(tmp_path / "k.pem", ec.generate_private_key(ec.SECP256R1()))
    root = tmp_path / "model"
    root.mkdir()
    tensors = {"w": np.arange(64, dtype=np.float32).reshape(8, 8), "b": np.ones(8, np.float32)}
    save_file(tensors, str(root / "x.safetensors"))
    (root / "config.json").write_text("{}")
    safeload.sign(root, method="key", private_key=priv, serialization="shards", shard_size=256)
    return root, KeySigner(public_key=str(pub)), tensors


def _load(vf: safeload.VerifiedFile) -> dict[str, np.ndarray]:
    """Load through safeload.load, which takes a verified file's bytes over (no re-open)."""
    reference = st_load(bytes(vf.buffer()))
    result = safeload.load(vf, framework="numpy")
    loaded = {k: np.asarray(v) for k, v in dict(result).items()}
    assert loaded.keys() == reference.keys()
    for k, v in reference.items():
        np.testing.assert_array_equal(loaded[k], v)
    return loaded


def _evil(tmp: Path) -> bytes:
    save_file({"w": np.full((8, 8), 666, np.float32), "b": np.zeros(8, np.float32)},
              str(tmp))
    return tmp.read_bytes()


def test_rename_over_after_verify(signed: tuple[Path, KeySigner, dict[str, np.ndarray]],
                                  tmp_path: Path) -> None:
    root, signer, tensors = signed
    model = safeload.verify(root, signers=[signer])
    original = bytes(model.files["x.safetensors"].buffer())
    evil = tmp_path / "evil.safetensors"
    _evil(evil)
    os.replace(evil, root / "x.safetensors")
    vf = model.files["x.safetensors"]
    assert bytes(vf.buffer()) == original
    loaded = _load(vf)
    np.testing.assert_array_equal(loaded["w"], tensors["w"])
    with pytest.raises(safeload.VerificationError):  # and a fresh verify sees the swap
        safeload.verify(root, signers=[signer])


def test_in_place_write_after_verify(signed: tuple[Path, KeySigner, dict[str, np.ndarray]],
                                     tmp_path: Path) -> None:
    root, signer, tensors = signed
    model = safeload.verify(root, signers=[signer])
    original = bytes(model.files["x.safetensors"].buffer())
    evil = _evil(tmp_path / "evil.safetensors")
    assert len(evil) == len(original)
    with (root / "x.safetensors").open("r+b") as fh:  # same inode, same size, new bytes
        fh.write(evil)
    vf = model.files["x.safetensors"]
    assert bytes(vf.buffer()) == original
    np.testing.assert_array_equal(_load(vf)["w"], tensors["w"])


def test_unsafe_mmap_trusts_the_file(signed: tuple[Path, KeySigner, dict[str, np.ndarray]],
                                     tmp_path: Path) -> None:
    # Documents exactly what unsafe_mmap gives up: an in-place write shows through.
    root, signer, _ = signed
    settings = TrustSettings(signers=(signer,), allow_unsafe_mmap=True)
    model = safeload.verify(root, policy=settings, unsafe_mmap=True, keep_bytes=False)
    evil = _evil(tmp_path / "evil.safetensors")
    with (root / "x.safetensors").open("r+b") as fh:
        fh.write(evil)
    assert bytes(model.files["x.safetensors"].buffer()) == evil


def test_buffer_is_read_only(signed: tuple[Path, KeySigner, dict[str, np.ndarray]]) -> None:
    root, signer, _ = signed
    vf = safeload.verify(root, signers=[signer]).files["x.safetensors"]
    assert vf.buffer().readonly
    assert vf.path.endswith("x.safetensors")


def test_keep_bytes_false_has_no_buffer(
        signed: tuple[Path, KeySigner, dict[str, np.ndarray]]) -> None:
    root, signer, _ = signed
    vf = safeload.verify(root, signers=[signer], keep_bytes=False).files["x.safetensors"]
    with pytest.raises(safeload.UsageError):
        vf.buffer()


def test_file_growing_while_hashed_is_refused(tmp_path: Path) -> None:
    priv, pub = write_key(tmp_path / "k.pem", ec.generate_private_key(ec.SECP256R1()))
    root = tmp_path / "model"
    root.mkdir()
    big = root / "big.bin"
    big.write_bytes(b"\0" * (9 << 20))
    safeload.sign(root, method="key", private_key=priv, serialization="files")
    appended = []

    def grow(done: int, total: int) -> None:
        if not appended:
            appended.append(done)
            with big.open("ab") as fh:
                fh.write(b"more")

    with pytest.raises(safeload.SourceError, match="grew"):
        safeload.verify(root, signers=[KeySigner(public_key=str(pub))], progress=grow)


def test_file_shrinking_while_hashed_is_refused(tmp_path: Path) -> None:
    priv, pub = write_key(tmp_path / "k.pem", ec.generate_private_key(ec.SECP256R1()))
    root = tmp_path / "model"
    root.mkdir()
    big = root / "big.bin"
    big.write_bytes(b"\1" * (9 << 20))
    safeload.sign(root, method="key", private_key=priv, serialization="files")
    seen = []

    def shrink(done: int, total: int) -> None:
        if not seen:
            seen.append(done)
            os.truncate(big, 1 << 20)

    with pytest.raises(safeload.SourceError, match="shrank"):
        safeload.verify(root, signers=[KeySigner(public_key=str(pub))], progress=shrink,
                        workers=1)


def _address(view: memoryview) -> int:
    return int(np.frombuffer(view, np.uint8).ctypes.data)


def test_torch_load_uses_the_verified_memory_without_copying(
        signed: tuple[Path, KeySigner, dict[str, np.ndarray]]) -> None:
    torch = pytest.importorskip("torch")
    root, signer, tensors = signed
    vf = safeload.verify(root, signers=[signer]).files["x.safetensors"]
    start = _address(vf.buffer())
    loaded = safeload.load(vf, framework="torch")
    w = loaded["w"]
    assert start <= w.data_ptr() < start + vf.size  # a view of the verified memory
    np.testing.assert_array_equal(w.numpy(), tensors["w"])
    w.add_(1)  # writable, like torch.load's tensors
    assert float(w[0, 0]) == 1.0
    assert isinstance(w, torch.Tensor)


def test_bytes_are_handed_over_once(
        signed: tuple[Path, KeySigner, dict[str, np.ndarray]]) -> None:
    root, signer, _ = signed
    vf = safeload.verify(root, signers=[signer]).files["x.safetensors"]
    safeload.load(vf, framework="numpy")
    # The loaded arrays own the memory now and may change it: it is no longer "verified".
    with pytest.raises(safeload.UsageError, match="handed over") as info:
        safeload.load(vf, framework="numpy")
    assert info.value.rule == "verify.bytes_taken"
    with pytest.raises(safeload.UsageError, match="handed over"):
        vf.buffer()


def test_inspect_does_not_take_the_bytes(
        signed: tuple[Path, KeySigner, dict[str, np.ndarray]]) -> None:
    root, signer, tensors = signed
    vf = safeload.verify(root, signers=[signer]).files["x.safetensors"]
    info = safeload.inspect(vf)
    assert {t.name for t in info.tensors} == set(tensors)
    np.testing.assert_array_equal(_load(vf)["w"], tensors["w"])


def test_unsafe_mmap_load_is_copy_on_write(
        signed: tuple[Path, KeySigner, dict[str, np.ndarray]]) -> None:
    pytest.importorskip("torch")
    root, signer, tensors = signed
    settings = TrustSettings(signers=(signer,), allow_unsafe_mmap=True)
    vf = safeload.verify(root, policy=settings, unsafe_mmap=True, keep_bytes=False)[
        "x.safetensors"]
    before = bytes(vf.buffer())
    start = _address(vf.buffer())
    loaded = safeload.load(vf, framework="torch")
    w = loaded["w"]
    assert start <= w.data_ptr() < start + vf.size  # a view of the mapping, no copy
    np.testing.assert_array_equal(w.numpy(), tensors["w"])
    w.add_(1)  # copy-on-write: the file is never written through
    assert (root / "x.safetensors").read_bytes() == before
    with pytest.raises(safeload.UsageError, match="handed over"):
        safeload.load(vf, framework="torch")


def _thp_mode() -> str:
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return "unavailable"
    return text.split("[", 1)[1].split("]", 1)[0] if "[" in text else "unavailable"


def _smaps_entry(address: int) -> str:
    """The /proc/self/smaps block of the mapping that contains ``address``."""
    block: list[str] = []
    found = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split(" ", 1)[0]
        if "-" in head and all(c in "0123456789abcdef-" for c in head):
            if found:
                break
            lo, hi = (int(x, 16) for x in head.split("-"))
            found = lo <= address < hi
            block = []
        block.append(line)
    assert found
    return "\n".join(block)


@pytest.mark.skipif(_thp_mode() not in ("always", "madvise"), reason="no transparent huge pages")
def test_kept_bytes_are_huge_page_eligible(tmp_path: Path) -> None:
    # Fresh 4 KiB page faults were the cost of keeping bytes; huge pages make them 512x fewer.
    priv, pub = write_key(tmp_path / "k.pem", ec.generate_private_key(ec.SECP256R1()))
    root = tmp_path / "model"
    root.mkdir()
    (root / "w.bin").write_bytes(os.urandom(6 << 20))
    safeload.sign(root, method="key", private_key=priv)
    vf = safeload.verify(root, signers=[KeySigner(public_key=str(pub))]).files["w.bin"]
    assert bytes(vf.buffer()) == (root / "w.bin").read_bytes()
    fields = dict(line.split(":", 1) for line in
                  _smaps_entry(_address(vf.buffer())).splitlines()[1:] if ":" in line)
    flags = fields["VmFlags"].split()
    assert "sh" not in flags  # private: a shared mapping would be shmem, without THP
    assert "hg" in flags  # MADV_HUGEPAGE
    assert fields.get("THPeligible", "1").strip() == "1"
