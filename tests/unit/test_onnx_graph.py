"""The runtime's own ONNX reader gives what the onnx package reads, and refuses garbage with a ValueError."""
from __future__ import annotations

import onnx
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper

from engine import onnx_graph
from engine.backends import default_model_dir
from engine.contract import ContractError, check_onnx

DTYPES = [TensorProto.FLOAT, TensorProto.UINT8, TensorProto.FLOAT16, TensorProto.INT64]
dims = st.lists(st.one_of(st.integers(0, 4096), st.sampled_from(["batch", "n", None])), max_size=5)
names = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(ins=st.lists(st.tuples(names, st.sampled_from(DTYPES), dims), min_size=1, max_size=3),
       outs=st.lists(st.tuples(names, st.sampled_from(DTYPES), dims), min_size=1, max_size=3),
       weights=st.lists(st.sampled_from(DTYPES), max_size=4), ops=st.lists(st.sampled_from(
           ["Relu", "Conv", "QuantizeLinear", "Cast"]), max_size=4), opset=st.integers(7, 23))
def test_reads_what_the_onnx_package_reads(ins, outs, weights, ops, opset):
    inits = [helper.make_tensor(f"w{i}", t, [2], [1, 2] if t != TensorProto.FLOAT16 else [15360, 16384],
                                raw=False) for i, t in enumerate(weights)]
    nodes = [helper.make_node(op, ["x"], [f"y{i}"]) for i, op in enumerate(ops)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, t, d) for n, t, d in ins],
                              [helper.make_tensor_value_info(n, t, d) for n, t, d in outs], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("x.y", 1)])
    assert onnx_graph.parse(model.SerializeToString()) == onnx_graph.from_proto(onnx.load_from_string(
        model.SerializeToString()))


def test_reads_the_shipped_models_as_the_onnx_package_does():
    files = sorted(default_model_dir().glob("*.onnx")) + sorted(default_model_dir().glob("detector/*.onnx"))
    assert files
    for path in files:
        assert onnx_graph.read(path) == onnx_graph.from_proto(onnx.load(str(path), load_external_data=False)), path


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_is_a_value_error_or_a_summary_never_a_crash(data):
    try:
        info = onnx_graph.parse(data)
    except ValueError:
        return
    assert isinstance(info, onnx_graph.GraphInfo)


@pytest.mark.parametrize("content", [b"", b"\xff" * 64, b"not an onnx file at all"])
def test_a_file_that_is_not_onnx_is_a_contract_error_naming_it(tmp_path, content):
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(ContractError, match=str(path)):
        check_onnx(path)
