"""from_pretrained: real transformers folders (single, sharded, .bin, HF cache) load bit-exactly,
and nothing a folder ships (Python files, auto_map, pickled code) ever runs."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from _pickle_asm import asm, call, glob, ustr  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from test_signing_helpers import write_key  # noqa: E402

import safeload  # noqa: E402
from safeload.policy import KeySigner, Policy, TrustPolicy  # noqa: E402

pytestmark = pytest.mark.torch

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _config() -> Any:
    return transformers.BertConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=24, max_position_embeddings=32, type_vocab_size=2,
    )


def _ids() -> Any:
    return torch.arange(12).reshape(2, 6) % 64


def _out(model: Any) -> Any:
    with torch.no_grad():
        return model(input_ids=_ids()).last_hidden_state


def _same_weights(a: Any, b: Any) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


@pytest.fixture
def bert(tmp_path: Path) -> tuple[Any, Path]:
    torch.manual_seed(0)
    model = transformers.BertModel(_config()).eval()
    folder = tmp_path / "bert"
    model.save_pretrained(folder)
    return model, folder


def test_single_safetensors_loads_bit_exactly(bert: tuple[Any, Path]) -> None:
    model, folder = bert
    assert (folder / "model.safetensors").exists()
    loaded = safeload.from_pretrained(transformers.BertModel, folder)
    assert isinstance(loaded, transformers.BertModel) and not loaded.training
    _same_weights(model, loaded)
    assert torch.equal(_out(model), _out(loaded))


def test_auto_model_class_builds_from_config_json(bert: tuple[Any, Path]) -> None:
    model, folder = bert
    loaded, info = safeload.from_pretrained(transformers.AutoModel, folder,
                                            output_loading_info=True)
    assert type(loaded) is transformers.BertModel
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    assert torch.equal(_out(model), _out(loaded))


def test_sharded_safetensors(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = transformers.BertModel(_config()).eval()
    folder = tmp_path / "sharded"
    model.save_pretrained(folder, max_shard_size="20KB")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    loaded = safeload.from_pretrained(transformers.BertModel, folder)
    _same_weights(model, loaded)
    assert torch.equal(_out(model), _out(loaded))


def _write_bin_shards(state: dict[str, Any], folder: Path, parts: int = 3) -> dict[str, str]:
    """What transformers' safe_serialization=False wrote: torch.save per shard plus an index."""
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(state)
    weight_map: dict[str, str] = {}
    for i in range(parts):
        shard = f"pytorch_model-{i + 1:05d}-of-{parts:05d}.bin"
        chunk = {k: state[k].clone() for k in names[i::parts]}
        torch.save(chunk, folder / shard)
        weight_map |= dict.fromkeys(chunk, shard)
    (folder / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}))
    return weight_map


def test_bin_shards_through_safeload_load(tmp_path: Path) -> None:
    torch.manual_seed(2)
    model = transformers.BertModel(_config()).eval()
    folder = tmp_path / "bin"
    _write_bin_shards(model.state_dict(), folder)
    model.config.save_pretrained(folder)
    loaded = safeload.from_pretrained(transformers.BertModel, folder)
    _same_weights(model, loaded)
    assert torch.equal(_out(model), _out(loaded))
    state = safeload.from_pretrained(None, folder)
    assert isinstance(state, safeload.PretrainedState) and len(state.weight_files) == 3


def test_tied_lm_head_is_not_reported_missing(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = transformers.BertForMaskedLM(_config()).eval()
    folder = tmp_path / "mlm"
    model.save_pretrained(folder)
    loaded, info = safeload.from_pretrained(transformers.BertForMaskedLM, folder,
                                            output_loading_info=True, strict=True)
    assert info["missing_keys"] == []
    decoder = loaded.cls.predictions.decoder.weight
    assert decoder.data_ptr() == loaded.bert.embeddings.word_embeddings.weight.data_ptr()
    with torch.no_grad():
        assert torch.equal(model(input_ids=_ids()).logits, loaded(input_ids=_ids()).logits)


def test_base_checkpoint_into_head_model_reports_new_head(bert: tuple[Any, Path]) -> None:
    model, folder = bert
    head, info = safeload.from_pretrained(transformers.BertForSequenceClassification, folder,
                                          output_loading_info=True, num_labels=3)
    assert head.config.num_labels == 3
    assert sorted(info["missing_keys"]) == ["classifier.bias", "classifier.weight"]
    assert info["unexpected_keys"] == []
    assert torch.equal(head.bert.embeddings.word_embeddings.weight,
                       model.embeddings.word_embeddings.weight)
    with pytest.raises(safeload.FormatError) as exc:
        safeload.from_pretrained(transformers.BertForSequenceClassification, folder, strict=True)
    assert exc.value.rule == "pretrained.strict"


def test_without_a_class_returns_state_and_config(bert: tuple[Any, Path]) -> None:
    model, folder = bert
    got = safeload.from_pretrained("bert", folder)
    assert isinstance(got, safeload.PretrainedState)
    assert got.config["model_type"] == "bert" and got.weight_files == ("model.safetensors",)
    assert got.state_dict.keys() == model.state_dict().keys()
    as_numpy = safeload.from_pretrained(None, folder, framework="numpy")
    w = "embeddings.word_embeddings.weight"
    assert (as_numpy.state_dict[w] == model.state_dict()[w].numpy()).all()


def test_shipped_code_and_auto_map_are_ignored_and_audited(
    bert: tuple[Any, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model, folder = bert
    marker = tmp_path / "imported"
    (folder / "modeling_evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\nclass EvilModel: pass\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_evil.EvilModel",
                          "AutoConfig": "modeling_evil.EvilConfig"}
    (folder / "config.json").write_text(json.dumps(config))
    with caplog.at_level(logging.INFO, logger="safeload.audit"):
        loaded = safeload.from_pretrained(transformers.AutoModel, folder)
    assert not marker.exists()
    assert type(loaded) is transformers.BertModel
    assert torch.equal(_out(model), _out(loaded))
    events = [json.loads(r.getMessage()) for r in caplog.records if r.name == "safeload.audit"]
    ignored = [e for e in events if e["event"] == "ignored_code"]
    assert len(ignored) == 1 and "modeling_evil.py" in ignored[0]["ignored"]
    assert any("auto_map" in item for item in ignored[0]["ignored"])
    state = safeload.from_pretrained(None, folder)
    assert "auto_map" not in state.config and "modeling_evil.py" in state.ignored_code
    # A Hub kernel named in the config would be fetched and run by transformers: dropped too.
    config["attn_implementation"] = "kernels-community/evil-attention"
    config["text_config"] = {"_attn_implementation": "evil/kernel", "auto_map": {"a": "b.C"},
                             "use_pretrained_backbone": True}
    config["output_attentions"] = False
    (folder / "config.json").write_text(json.dumps(config))
    state = safeload.from_pretrained(None, folder)
    assert "attn_implementation" not in state.config
    assert state.config["text_config"] == {"use_pretrained_backbone": False}
    assert state.config["output_attentions"] is False
    assert len([i for i in state.ignored_code if i.startswith("config.json:")]) == 5
    assert torch.equal(_out(model), _out(safeload.from_pretrained(transformers.BertModel, folder)))
    config["attn_implementation"] = "eager"
    (folder / "config.json").write_text(json.dumps(config))
    assert safeload.from_pretrained(None, folder).config["attn_implementation"] == "eager"
    with pytest.raises(safeload.UsageError):
        safeload.from_pretrained(transformers.AutoModel, folder, trust_remote_code=True)
    assert not marker.exists()


def _evil_pickle(marker: Path) -> bytes:
    """A pickle whose REDUCE would call os.system (the classic torch.load RCE)."""
    return asm(("PROTO", 2), call(glob("os", "system"), ustr(f"touch {marker}")), "STOP")


def test_malicious_bin_is_refused(bert: tuple[Any, Path], tmp_path: Path) -> None:
    _, folder = bert
    marker = tmp_path / "pwned"
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(_evil_pickle(marker))
    with pytest.raises(safeload.RefusedError):
        safeload.from_pretrained(transformers.BertModel, folder)
    assert not marker.exists()


def _two_shards(folder: Path, a: dict[str, Any], b: dict[str, Any], weight_map: dict[str, str]
                ) -> None:
    folder.mkdir()
    save_file(a, str(folder / "s1.safetensors"))
    save_file(b, str(folder / "s2.safetensors"))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def test_duplicate_tensor_across_shards_is_refused(tmp_path: Path) -> None:
    t = torch.ones(2)
    _two_shards(tmp_path / "m", {"a": t}, {"a": t * 2, "b": t},
                {"a": "s1.safetensors", "b": "s2.safetensors"})
    with pytest.raises(safeload.FormatError) as exc:
        safeload.from_pretrained(None, tmp_path / "m")
    assert exc.value.rule == "pretrained.duplicate_tensor"


@pytest.mark.parametrize(
    ("weight_map", "error", "rule"),
    [
        ({"a": "../outside.safetensors"}, safeload.SourceError, "source.path"),
        ({"a": "/etc/passwd"}, safeload.SourceError, "source.path"),
        ({"a": "s1.safetensors", "b": "s3.safetensors"}, safeload.SourceError, "pretrained.index"),
        ({"a": "s2.safetensors", "b": "s1.safetensors"}, safeload.FormatError, "pretrained.index"),
        ({"a": "s1.safetensors", "b": "s2.safetensors", "c": "s2.safetensors"},
         safeload.FormatError, "pretrained.index"),
        ({"a": "config.json"}, safeload.FormatError, "pretrained.index"),
    ],
)
def test_bad_shard_index_is_refused(tmp_path: Path, weight_map: dict[str, str],
                                    error: type[Exception], rule: str) -> None:
    save_file({"x": torch.zeros(1)}, str(tmp_path / "outside.safetensors"))
    _two_shards(tmp_path / "m", {"a": torch.ones(1)}, {"b": torch.ones(1)}, weight_map)
    (tmp_path / "m" / "config.json").write_text("{}")
    with pytest.raises(error) as exc:
        safeload.from_pretrained(None, tmp_path / "m")
    assert getattr(exc.value, "rule", None) == rule


def _hf_cache(root: Path, folder: Path, repo: str = "org/tiny") -> Path:
    """The hub cache layout: blobs named by digest, a snapshot of relative links, refs/main."""
    repo_dir = root / ("models--" + repo.replace("/", "--"))
    (repo_dir / "blobs").mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(COMMIT)
    snapshot = repo_dir / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for f in folder.iterdir():
        blob = hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copyfile(f, repo_dir / "blobs" / blob)
        (snapshot / f.name).symlink_to(Path("..", "..", "blobs", blob))
    return snapshot


def _blob(folder: Path) -> str:
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


def test_hf_cache_reference_resolves_offline(bert: tuple[Any, Path], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    model, folder = bert
    cache = tmp_path / "hub"
    snapshot = _hf_cache(cache, folder)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    for ref, revision in (("org/tiny", None), (f"org/tiny@{COMMIT}", None), ("org/tiny", "main")):
        loaded = safeload.from_pretrained(transformers.BertModel, ref, revision=revision)
        assert torch.equal(_out(model), _out(loaded))
    assert safeload.from_pretrained(None, snapshot).root == str(snapshot)
    monkeypatch.delenv("HF_HUB_CACHE")
    got = safeload.from_pretrained("bert", "org/tiny", cache_dir=cache, map_location="meta")
    assert got.state_dict["pooler.dense.weight"].is_meta
    with pytest.raises(safeload.PolicyViolation):  # a snapshot given by path names its repo too
        safeload.from_pretrained(None, snapshot, policy=Policy.model_validate(
            {"sources": {"allowed_repos": ["other/*"]}}))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    with pytest.raises(safeload.SourceError):
        safeload.from_pretrained(None, "org/absent")
    with pytest.raises(safeload.PolicyViolation):
        safeload.from_pretrained(None, "org/tiny",
                                 policy=Policy.model_validate({"sources": {"allowed_repos":
                                                                           ["other/*"]}}))
    with pytest.raises(safeload.SourceError) as exc:
        safeload.from_pretrained(None, "org/tiny",
                                 policy=Policy.model_validate({"sources": {"require_revision":
                                                                           True}}))
    assert exc.value.rule == "sources.require_revision"


def test_hf_cache_link_escaping_the_repo_is_refused(bert: tuple[Any, Path], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _, folder = bert
    cache = tmp_path / "hub"
    snapshot = _hf_cache(cache, folder)
    outside = tmp_path / "elsewhere.safetensors"
    shutil.copyfile(folder / "model.safetensors", outside)
    (snapshot / "model.safetensors").unlink()
    (snapshot / "model.safetensors").symlink_to(os.path.relpath(outside, snapshot))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    with pytest.raises(safeload.SourceError) as exc:
        safeload.from_pretrained(transformers.BertModel, "org/tiny")
    assert "outside" in exc.value.message
    # The snapshot folder itself linked out of the repo folder.
    (snapshot / "model.safetensors").unlink()
    (snapshot / "model.safetensors").symlink_to(Path("..", "..", "blobs", _blob(folder)))
    safeload.from_pretrained(None, "org/tiny")  # repaired: loads again
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(snapshot, elsewhere, symlinks=False)
    shutil.rmtree(snapshot)
    snapshot.symlink_to(elsewhere)
    for ref in ("org/tiny", snapshot):
        with pytest.raises(safeload.SourceError) as exc:
            safeload.from_pretrained(None, ref)
        assert exc.value.rule == "trust.allow_symlinks"
    # A plain folder of links is refused outright unless the policy allows symlinks.
    plain = tmp_path / "links"
    plain.mkdir()
    (plain / "model.safetensors").symlink_to(folder / "model.safetensors")
    with pytest.raises(safeload.SourceError):
        safeload.from_pretrained(None, plain)


def test_signed_folder_is_verified_then_loaded_from_verified_bytes(
    bert: tuple[Any, Path], tmp_path: Path
) -> None:
    model, folder = bert
    priv, pub = write_key(tmp_path / "k.pem", ec.generate_private_key(ec.SECP256R1()))
    safeload.sign(folder, method="key", private_key=priv)
    policy = Policy(trust=TrustPolicy(require_signature=True,
                                      signers=(KeySigner(public_key=str(pub)),)))
    got = safeload.from_pretrained(None, folder, policy=policy)
    assert got.verified is not None and "model.safetensors" in got.verified.files
    loaded = safeload.from_pretrained(transformers.BertModel, folder, policy=policy)
    assert torch.equal(_out(model), _out(loaded))
    with pytest.raises(safeload.UsageError):
        safeload.from_pretrained(None, folder, policy=policy, verify=False)
    signed_config = (folder / "config.json").read_bytes()
    config = json.loads(signed_config)
    config["hidden_act"] = "relu"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(safeload.VerificationError):
        safeload.from_pretrained(transformers.BertModel, folder, policy=policy)
    # The same signed folder as a Hugging Face cache snapshot (model.sig a link into blobs/ too).
    (folder / "config.json").write_bytes(signed_config)
    cache = tmp_path / "hub"
    _hf_cache(cache, folder)
    cached = safeload.from_pretrained(transformers.BertModel, "org/tiny", cache_dir=cache,
                                      policy=policy)
    assert torch.equal(_out(model), _out(cached))
    unsigned = tmp_path / "unsigned"
    shutil.copytree(folder, unsigned)
    (unsigned / "model.sig").unlink()
    with pytest.raises(safeload.VerificationError):
        safeload.from_pretrained(None, unsigned, verify=True,
                                 policy=Policy(trust=TrustPolicy(
                                     signers=(KeySigner(public_key=str(pub)),))))


def test_usage_errors(bert: tuple[Any, Path], tmp_path: Path) -> None:
    _, folder = bert
    with pytest.raises(safeload.SourceError):
        safeload.from_pretrained(None, tmp_path / "missing")
    with pytest.raises(safeload.UsageError):
        safeload.from_pretrained(None, folder, revision="main")
    with pytest.raises(safeload.UsageError):
        safeload.from_pretrained(transformers.BertModel, folder, framework="numpy")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(safeload.SourceError) as exc:
        safeload.from_pretrained(None, empty)
    assert exc.value.rule == "pretrained.weights"
    (folder / "config.json").write_text("[1, 2]")
    with pytest.raises(safeload.FormatError):
        safeload.from_pretrained(None, folder)


def test_subfolder_variant_and_file_choice(bert: tuple[Any, Path], tmp_path: Path) -> None:
    model, folder = bert
    repo = tmp_path / "repo"
    shutil.copytree(folder, repo / "text_encoder")
    (repo / "text_encoder" / "model.safetensors").rename(
        repo / "text_encoder" / "model.fp16.safetensors")
    loaded = safeload.from_pretrained(transformers.BertModel, repo, subfolder="text_encoder",
                                      variant="fp16")
    assert torch.equal(_out(model), _out(loaded))
    with pytest.raises(safeload.SourceError) as exc:
        safeload.from_pretrained(None, repo, subfolder="text_encoder")
    assert exc.value.rule == "pretrained.weights"
    with pytest.raises(safeload.SourceError):
        safeload.from_pretrained(None, repo, subfolder="../bert")
    with pytest.raises(safeload.UsageError):
        safeload.from_pretrained(None, repo, subfolder="text_encoder", variant="../x")
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    assert safeload.from_pretrained(None, folder).weight_files == ("model.safetensors",)
    only_bin = safeload.from_pretrained(None, folder, use_safetensors=False)
    assert only_bin.weight_files == ("pytorch_model.bin",)


def test_config_object_and_unsupported_options(bert: tuple[Any, Path]) -> None:
    model, folder = bert
    config = transformers.BertConfig.from_dict(model.config.to_dict())
    loaded = safeload.from_pretrained(transformers.BertModel, folder, config=config,
                                      token="ignored", force_download=True)
    assert torch.equal(_out(model), _out(loaded))
    for option in ({"device_map": "auto"}, {"load_in_8bit": True}, {"weights_only": False}):
        with pytest.raises(safeload.UsageError) as exc:
            safeload.from_pretrained(transformers.BertModel, folder, **option)
        assert exc.value.rule == "pretrained.kwargs"
    half = safeload.from_pretrained(transformers.BertModel, folder, dtype=torch.float16)
    assert half.embeddings.word_embeddings.weight.dtype == torch.float16


def test_weights_can_be_parsed_in_the_sandbox(tmp_path: Path) -> None:
    report = safeload.doctor()
    if report.probe_error:
        pytest.skip(f"the sandbox worker cannot run here: {report.probe_error}")
    torch.manual_seed(4)
    model = transformers.BertModel(_config()).eval()
    folder = tmp_path / "bin"
    _write_bin_shards(model.state_dict(), folder, parts=2)
    model.config.save_pretrained(folder)
    loaded = safeload.from_pretrained(transformers.BertModel, folder, sandbox=True)
    _same_weights(model, loaded)


@pytest.mark.skipif(__import__("sys").platform != "linux", reason="the sandbox needs Linux")
def test_a_sandboxed_from_pretrained_starts_the_fork_server_first_and_loads(
    tmp_path: Path,
) -> None:
    """Every shard goes to a worker, so the fork server starts before the folder is even
    resolved: a folder refused before any file is loaded has already started it."""
    import torch as _torch

    from safeload.policy import SandboxPolicy
    from safeload.sandbox import _runner, prewarm

    folder = tmp_path / "m"
    folder.mkdir()
    _torch.save({"a": _torch.ones(2)}, folder / "pytorch_model-00001-of-00002.bin")
    _torch.save({"b": _torch.zeros(3)}, folder / "pytorch_model-00002-of-00002.bin")
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {
        "a": "pytorch_model-00001-of-00002.bin", "b": "pytorch_model-00002-of-00002.bin"}}))
    always = Policy(sandbox=SandboxPolicy(mode="always"))
    prewarm(False)
    with pytest.raises(safeload.SafeloadError):  # no weights: refused before any file is loaded
        safeload.from_pretrained(None, _empty(tmp_path), policy=always)
    assert _runner._server is not None and _runner._server.alive()  # yet already started
    state = safeload.from_pretrained(None, folder, policy=always)
    assert _torch.equal(state.state_dict["a"], _torch.ones(2))
    assert _torch.equal(state.state_dict["b"], _torch.zeros(3))


def _empty(tmp_path: Path) -> Path:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    return empty
