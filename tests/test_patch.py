"""safeload.patch(): an unmodified app's torch.load / numpy.load / transformers loading goes
through safeload; hostile checkpoints are refused and never run; unpatch puts back exactly
what was there."""

from __future__ import annotations

import io
import json
import logging
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from _pickle_asm import asm, call, glob, ustr  # noqa: E402

import safeload  # noqa: E402
from safeload.policy import Limits, Policy  # noqa: E402

pytestmark = pytest.mark.torch


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    assert not safeload.is_patched()
    yield
    safeload.unpatch()


def app_load(path: Path) -> Any:
    """Stands for application code nobody wants to edit: it just calls torch.load."""
    return torch.load(path, map_location="cpu")


def _evil_pickle(marker: Path) -> bytes:
    """REDUCE over os.system: what a hostile checkpoint's data.pkl does to plain pickle."""
    return asm(("PROTO", 2), call(glob("os", "system"), ustr(f"touch {marker}")), "STOP")


def _evil_zip_checkpoint(benign: Path, marker: Path, out: Path) -> None:
    """A real torch.save zip whose data.pkl was swapped for the payload."""
    with zipfile.ZipFile(benign) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("/data.pkl"):
                data = _evil_pickle(marker)
            dst.writestr(info.filename, data)


def _audit(caplog: pytest.LogCaptureFixture, event: str) -> list[dict[str, Any]]:
    records = [json.loads(r.getMessage()) for r in caplog.records if r.name == "safeload.audit"]
    return [r for r in records if r["event"] == event]


@pytest.fixture
def benign(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    state = {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4), "b": torch.ones(4),
             "step": 7}
    path = tmp_path / "benign.pt"
    torch.save(state, path)
    return path, state


def test_malicious_checkpoints_refused_under_patch(tmp_path: Path,
                                                  benign: tuple[Path, dict[str, Any]]) -> None:
    marker = tmp_path / "pwned"
    raw = tmp_path / "evil.pkl"
    raw.write_bytes(_evil_pickle(marker))
    zipped = tmp_path / "evil.pt"
    _evil_zip_checkpoint(benign[0], marker, zipped)
    safeload.patch()
    for path in (raw, zipped):
        with pytest.raises(safeload.UnsafeModelError) as exc:
            app_load(path)
        assert "os.system" in str(exc.value)
        with pytest.raises(safeload.RefusedError):
            torch.serialization.load(path)
    assert not marker.exists()


def test_benign_checkpoint_loads_equal_and_weights_only_false_is_refused(
    benign: tuple[Path, dict[str, Any]]
) -> None:
    path, state = benign
    with safeload.patched():
        got = app_load(path)
        assert got.keys() == state.keys() and got["step"] == 7
        assert torch.equal(got["w"], state["w"]) and torch.equal(got["b"], state["b"])
        with path.open("rb") as fh:
            assert torch.equal(torch.load(fh)["w"], state["w"])
        with pytest.raises(safeload.UsageError) as exc:
            torch.load(path, weights_only=False)
        assert exc.value.rule == "load.weights_only"
        with pytest.raises(safeload.UsageError):
            torch.load(path, pickle_module=__import__("pickle"))
    assert not safeload.is_patched()


def test_unpatch_restores_the_originals_exactly() -> None:
    originals = (torch.load, torch.serialization.load, np.load)
    assert torch.load is torch.serialization.load
    safeload.patch()
    assert safeload.is_patched()
    assert torch.load is not originals[0] and np.load is not originals[2]
    assert torch.load is torch.serialization.load  # still one function, as in torch
    assert torch.load.__name__ == originals[0].__name__
    safeload.unpatch()
    assert (torch.load, torch.serialization.load, np.load) == originals
    assert torch.load is originals[0] and np.load is originals[2]
    safeload.unpatch()  # a no-op when not patched
    assert torch.load is originals[0]


def test_idempotent_and_each_target_audited_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="safeload.audit"):
        safeload.patch()
        first = torch.load
        safeload.patch()
        with safeload.patched():  # inside an explicit patch: leaves it alone on exit
            pass
        assert torch.load is first and safeload.is_patched()
        safeload.unpatch()
    patched = sorted(r["target"] for r in _audit(caplog, "patched"))
    assert patched.count("torch.load") == 1 and patched.count("numpy.load") == 1
    assert "torch.serialization.load" in patched
    assert sorted(r["target"] for r in _audit(caplog, "unpatched")) == patched


def test_a_different_policy_while_patched_is_refused(tmp_path: Path,
                                                    benign: tuple[Path, dict[str, Any]]) -> None:
    tight = Policy(limits=Limits(max_file_bytes=16))
    safeload.patch(policy=tight)
    safeload.patch(policy=tight)  # same policy: fine
    with pytest.raises(safeload.UsageError):
        safeload.patch()
    with pytest.raises(safeload.UsageError), safeload.patched(policy=Policy()):
        pass
    with pytest.raises(safeload.LimitExceededError):  # the patch's policy reaches every load
        app_load(benign[0])


def test_concurrent_patch_installs_once(caplog: pytest.LogCaptureFixture) -> None:
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        safeload.patch()

    with caplog.at_level(logging.INFO, logger="safeload.audit"):
        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert [r["target"] for r in _audit(caplog, "patched")].count("torch.load") == 1
    assert getattr(torch.load, "__wrapped__", None) is not None


def test_numpy_load_refuses_allow_pickle(tmp_path: Path) -> None:
    arr = np.arange(6, dtype=np.int16)
    np.save(tmp_path / "a.npy", arr)
    marker = tmp_path / "pwned"
    (tmp_path / "obj.npy").write_bytes(_evil_pickle(marker))
    with safeload.patched():
        assert (np.load(tmp_path / "a.npy") == arr).all()
        with pytest.raises(safeload.UsageError) as exc:
            np.load(tmp_path / "obj.npy", allow_pickle=True)
        assert exc.value.rule == "patch.numpy_allow_pickle"
        with pytest.raises(safeload.UsageError):
            np.load(tmp_path / "obj.npy", None, True)  # positional allow_pickle too
        buf = io.BytesIO()
        np.save(buf, arr)
        buf.seek(0)
        assert (np.load(buf) == arr).all()
    assert not marker.exists()


def test_transformers_loading_goes_through_safeload(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    import transformers.modeling_utils as mu

    config = transformers.BertConfig(vocab_size=32, hidden_size=8, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=8,
                                     max_position_embeddings=16)
    torch.manual_seed(0)
    model = transformers.BertModel(config).eval()
    folder = tmp_path / "bin"
    folder.mkdir()
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    original = mu.load_state_dict
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.bin"
    evil.write_bytes(_evil_pickle(marker))
    with safeload.patched():
        assert mu.load_state_dict is not original
        state = mu.load_state_dict(str(folder / "pytorch_model.bin"))
        assert torch.equal(state["pooler.dense.weight"], model.state_dict()["pooler.dense.weight"])
        with pytest.raises(safeload.UnsafeModelError):
            mu.load_state_dict(str(evil))
        with pytest.raises(safeload.UsageError):
            mu.load_state_dict(str(evil), weights_only=False)
        loaded = transformers.BertModel.from_pretrained(folder)  # the app's own call, unchanged
        ids = torch.arange(6).reshape(1, 6)
        with torch.no_grad():
            assert torch.equal(model(input_ids=ids).last_hidden_state,
                               loaded(input_ids=ids).last_hidden_state)
    assert mu.load_state_dict is original
    assert not marker.exists()


def test_patch_events_reach_the_policy_audit_log(tmp_path: Path,
                                                 benign: tuple[Path, dict[str, Any]]) -> None:
    log = tmp_path / "audit.jsonl"
    policy = Policy(audit_log=str(log))
    with safeload.patched(policy=policy):
        app_load(benign[0])
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    events = [(r["event"], r.get("target")) for r in lines]
    assert ("patched", "torch.load") in events and ("unpatched", "torch.load") in events
    assert ("decision", None) in events  # the load itself was decided and audited
    assert all(r["policy_digest"] == policy.digest() for r in lines)


@pytest.mark.skipif(__import__("sys").platform != "linux", reason="the sandbox needs Linux")
def test_a_sandboxing_policy_starts_the_fork_server_at_patch_time(tmp_path: Path) -> None:
    """The server starts with the application, not inside its first load; loads still work."""
    from safeload.policy import SandboxPolicy
    from safeload.sandbox import _runner, prewarm

    prewarm(False)
    safeload.patch(policy=Policy())  # the default policy never sandboxes: nothing started
    assert _runner._server is None
    safeload.unpatch()
    safeload.patch(policy=Policy(sandbox=SandboxPolicy(mode="always")))
    try:
        assert _runner._server is not None and _runner._server.alive()
        path = tmp_path / "m.pt"
        torch.save({"w": torch.arange(4.0)}, path)
        assert torch.equal(torch.load(path)["w"], torch.arange(4.0))  # through the worker
    finally:
        safeload.unpatch()
