"""The ONNX graph check: real models pass; each hostile graph is refused with its rule.

Real models are the ones onnx's wheel ships (``onnx/backend/test/data/light``); hostile ones
are built here with ``onnx.helper``, so each test shows its payload.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from safeload.errors import (  # noqa: E402
    FormatError,
    LimitExceededError,
    PolicyViolation,
    RefusedError,
)
from safeload.integrations._onnx_check import OnnxGraphInfo, check_onnx_graph  # noqa: E402
from safeload.policy import OnnxPolicy  # noqa: E402

POLICY = OnnxPolicy()
LIGHT = sorted((Path(onnx.__file__).parent / "backend" / "test" / "data" / "light").glob("*.onnx"))
X = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
Y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
COND = helper.make_tensor_value_info("c", TensorProto.BOOL, [])


def _model(
    nodes: list[Any],
    *,
    inits: list[Any] = (),
    opsets: dict[str, int] | None = None,
    inputs: list[Any] | None = None,
    functions: list[Any] = (),
) -> Any:
    graph = helper.make_graph(nodes, "g", inputs or [X], [Y], list(inits))
    imports = [helper.make_opsetid(d, v) for d, v in (opsets or {"": 17}).items()]
    return helper.make_model(graph, opset_imports=imports, functions=list(functions))


def _bytes(model: Any) -> bytes:
    return bytes(model.SerializeToString())


def _refused(
    model: Any, rule: str, *, policy: OnnxPolicy = POLICY, model_dir: Path | None = None
) -> RefusedError:
    with pytest.raises(RefusedError) as info:
        check_onnx_graph(_bytes(model), policy=policy, model_dir=model_dir, name="m.onnx")
    assert info.value.rule == rule, info.value
    assert info.value.path == "m.onnx"
    return info.value


def _external(tmp_path: Path, location: str = "w.bin") -> Any:
    """A valid model whose one initializer lives in ``tmp_path/w.bin``; location rewritten."""
    weight = numpy_helper.from_array(np.arange(4, dtype=np.float32), "w")
    model = _model([helper.make_node("Add", ["x", "w"], ["y"])], inits=[weight])
    onnx.save(
        model,
        str(tmp_path / "m.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="w.bin",
        size_threshold=0,
    )
    model = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    return model


def _branch(node: Any, name: str) -> Any:
    out = helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, [4])
    return helper.make_graph([node], name, [], [out])


# -- real models ------------------------------------------------------------------------------
@pytest.mark.parametrize("path", LIGHT, ids=lambda p: p.name)
def test_real_models_from_the_onnx_wheel_pass(path: Path) -> None:
    info = check_onnx_graph(path, policy=POLICY)
    assert isinstance(info, OnnxGraphInfo)
    reference = onnx.load(str(path), load_external_data=False)
    assert info.nodes == len(reference.graph.node) > 0
    assert info.opsets == {"": 9} and info.graphs == 1 and info.external_data == ()
    assert {n.op_type for n in reference.graph.node} == set(info.op_types)
    assert info.initializers >= len(reference.graph.initializer)  # plus attribute constants


def test_the_wheel_ships_real_models() -> None:
    assert len(LIGHT) >= 5


def test_bytes_and_path_give_the_same_facts() -> None:
    path = LIGHT[0]
    assert check_onnx_graph(path.read_bytes(), policy=POLICY) == check_onnx_graph(
        path, policy=POLICY
    )


# -- domains and operators --------------------------------------------------------------------
def test_custom_domain_import_is_refused() -> None:
    node = helper.make_node("Evil", ["x"], ["y"], domain="evil.ops")
    err = _refused(_model([node], opsets={"": 17, "evil.ops": 1}), "onnx.allowed_domains")
    assert isinstance(err, PolicyViolation)


def test_custom_domain_node_without_import_is_refused() -> None:
    node = helper.make_node("Evil", ["x"], ["y"], domain="com.microsoft")
    _refused(_model([node]), "onnx.allowed_domains")


def test_custom_op_in_nested_subgraph_is_refused() -> None:
    """Loop body -> If -> else branch -> custom op: three levels down."""
    evil = helper.make_node("Evil", ["x"], ["e"], domain="evil.ops")
    ok = helper.make_node("Identity", ["x"], ["e"])
    inner_if = helper.make_node(
        "If", ["c"], ["e"], then_branch=_branch(ok, "t"), else_branch=_branch(evil, "f")
    )
    body = helper.make_graph(
        [inner_if, helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("e", TensorProto.FLOAT, [4]),
        ],
    )
    loop = helper.make_node("Loop", ["", "c"], ["y"], body=body)
    _refused(_model([loop], inputs=[X, COND]), "onnx.allowed_domains")


def test_custom_op_inside_a_local_function_is_refused() -> None:
    body = [helper.make_node("Evil", ["a"], ["b"], domain="evil.ops")]
    fn = helper.make_function("local.fns", "F", ["a"], ["b"], body, [helper.make_opsetid("", 17)])
    call = helper.make_node("F", ["x"], ["y"], domain="local.fns")
    _refused(_model([call], functions=[fn]), "onnx.allowed_domains")


def test_local_function_of_standard_ops_passes() -> None:
    body = [helper.make_node("Relu", ["a"], ["b"])]
    fn = helper.make_function("local.fns", "F", ["a"], ["b"], body, [helper.make_opsetid("", 17)])
    call = helper.make_node("F", ["x"], ["y"], domain="local.fns")
    model = _model([call], functions=[fn], opsets={"": 17, "local.fns": 1})
    policy = OnnxPolicy(allowed_domains=("", "ai.onnx", "local.fns"))
    info = check_onnx_graph(_bytes(model), policy=policy)
    assert info.functions == 1 and info.nodes == 2
    assert set(info.op_types) == {"Relu", "local.fns:F"}


def test_denied_op_is_refused() -> None:
    node = helper.make_node("Relu", ["x"], ["y"])
    _refused(_model([node]), "onnx.denied_ops", policy=OnnxPolicy(denied_ops=("Relu",)))


def test_op_outside_allowlist_is_refused() -> None:
    node = helper.make_node("Relu", ["x"], ["y"])
    _refused(_model([node]), "onnx.allowed_ops", policy=OnnxPolicy(allowed_ops=("Conv",)))
    info = check_onnx_graph(_bytes(_model([node])), policy=OnnxPolicy(allowed_ops=("Relu",)))
    assert info.op_types == ("Relu",)


def test_unknown_op_in_the_default_domain_is_refused() -> None:
    node = helper.make_node("SystemCall", ["x"], ["y"])
    _refused(_model([node]), "onnx.allowed_ops")


# -- opsets -----------------------------------------------------------------------------------
@pytest.mark.parametrize("version", [5, 30])
def test_opset_outside_range_is_refused(version: int) -> None:
    node = helper.make_node("Relu", ["x"], ["y"])
    err = _refused(_model([node], opsets={"": version}), "onnx.opset")
    assert "7..23" in (err.detail or "")


# -- external data ----------------------------------------------------------------------------
def test_external_data_inside_the_folder_passes(tmp_path: Path) -> None:
    info = check_onnx_graph(tmp_path / "m.onnx", policy=POLICY) if _external(tmp_path) else None
    assert info is not None and info.external_data == ("w.bin",)
    assert info.initializer_bytes == 16


@pytest.mark.parametrize(
    "location",
    [
        "../../etc/passwd",
        "/etc/passwd",
        "sub/../../outside.bin",
        "..\\..\\x.bin",
        "C:\\w.bin",
        "\\\\server\\share\\w.bin",
    ],
)
def test_external_data_escaping_the_folder_is_refused(tmp_path: Path, location: str) -> None:
    err = _refused(_external(tmp_path, location), "onnx.external_data", model_dir=tmp_path)
    assert "inside the model folder" in (err.detail or "")


def test_external_data_symlink_escape_is_refused(tmp_path: Path) -> None:
    (tmp_path / "evil.bin").symlink_to("/etc/passwd")
    err = _refused(_external(tmp_path, "evil.bin"), "onnx.external_data", model_dir=tmp_path)
    assert "symbolic link" in (err.detail or "")


def test_external_data_symlinked_folder_escape_is_refused(tmp_path: Path) -> None:
    (tmp_path / "sub").symlink_to("/etc")
    _refused(_external(tmp_path, "sub/passwd"), "onnx.external_data", model_dir=tmp_path)


def test_external_data_fifo_is_refused_without_opening_it(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.bin")
    _refused(_external(tmp_path, "pipe.bin"), "onnx.external_data", model_dir=tmp_path)


def test_external_data_forbidden_by_policy(tmp_path: Path) -> None:
    policy = OnnxPolicy(external_data="forbid")
    _refused(_external(tmp_path), "onnx.external_data", policy=policy, model_dir=tmp_path)


def test_external_data_without_a_model_folder_is_refused(tmp_path: Path) -> None:
    _refused(_external(tmp_path), "onnx.external_data", model_dir=None)


def test_external_data_missing_file_is_a_format_error(tmp_path: Path) -> None:
    err = _refused(_external(tmp_path, "nope.bin"), "onnx.external_data", model_dir=tmp_path)
    assert isinstance(err, FormatError)


def test_external_data_past_the_end_is_a_format_error(tmp_path: Path) -> None:
    model = _external(tmp_path)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "offset":
            entry.value = "4096"
    err = _refused(model, "onnx.external_data", model_dir=tmp_path)
    assert isinstance(err, FormatError)


def test_external_data_in_a_subgraph_constant_is_checked(tmp_path: Path) -> None:
    tensor = numpy_helper.from_array(np.zeros(4, dtype=np.float32), "k")
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "../../../proc/self/environ"
    tensor.ClearField("raw_data")
    const = helper.make_node("Constant", [], ["e"], value=tensor)
    iff = helper.make_node(
        "If",
        ["c"],
        ["y"],
        then_branch=_branch(const, "t"),
        else_branch=_branch(helper.make_node("Identity", ["x"], ["e"]), "f"),
    )
    _refused(_model([iff], inputs=[X, COND]), "onnx.external_data", model_dir=tmp_path)


# -- bounds and malformed models --------------------------------------------------------------
def test_too_many_nodes_counting_subgraphs() -> None:
    then = _branch(helper.make_node("Relu", ["x"], ["e"]), "t")
    other = _branch(helper.make_node("Abs", ["x"], ["e"]), "f")
    iff = helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)
    model = _model([iff], inputs=[X, COND])
    info = check_onnx_graph(_bytes(model), policy=POLICY)
    assert info.nodes == 3 and info.graphs == 3
    err = _refused(model, "onnx.max_nodes", policy=OnnxPolicy(max_nodes=2))
    assert isinstance(err, LimitExceededError)


def test_initializer_bytes_are_bounded_by_declared_size() -> None:
    """A tensor that declares 2**40 elements but stores four is counted as declared."""
    weight = numpy_helper.from_array(np.ones(4, dtype=np.float32), "w")
    node = helper.make_node("Add", ["x", "w"], ["y"])
    model = _model([node], inits=[weight])
    assert check_onnx_graph(_bytes(model), policy=POLICY).initializer_bytes == 16
    _refused(model, "onnx.max_initializer_bytes", policy=OnnxPolicy(max_initializer_bytes=8))
    del weight.dims[:]
    weight.dims.extend([1 << 20, 1 << 20])
    lying = _model([node], inits=[weight])
    _refused(lying, "onnx.max_initializer_bytes")


def test_garbage_is_a_format_error() -> None:
    with pytest.raises(FormatError) as info:
        check_onnx_graph(b"\xff\xff\xff\xff not protobuf", policy=POLICY, name="x.onnx")
    assert info.value.rule == "onnx.parse"


def test_structurally_invalid_graph_fails_the_checker() -> None:
    node = helper.make_node("Add", ["x"], ["y"])  # Add needs two inputs
    err = _refused(_model([node]), "onnx.checker")
    assert isinstance(err, FormatError)


def test_deeply_nested_custom_op_is_found() -> None:
    """As deep as protobuf lets one build (about 30 If levels): walked, counted, refused."""
    leaf = _branch(helper.make_node("Identity", ["x"], ["y"]), "leaf")
    graph = _branch(helper.make_node("Evil", ["x"], ["y"], domain="evil.ops"), "bottom")
    for depth in range(30):
        node = helper.make_node("If", ["c"], ["y"], then_branch=graph, else_branch=leaf)
        graph = helper.make_graph([node], f"g{depth}", [], [Y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    err = _refused(model, "onnx.allowed_domains")
    assert "evil.ops:Evil" in err.message
