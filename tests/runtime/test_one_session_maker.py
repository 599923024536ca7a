"""Every ONNX Runtime session edgekd creates comes from edgekd/runtime/session.py (make_session
for bench, cpu_session for edgekd's own CPU work), as ARCHITECTURE.md says: no other module
constructs an InferenceSession."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import edgekd

PACKAGE = Path(edgekd.__file__).parent
SESSION_MAKER = PACKAGE / "runtime" / "session.py"


def test_only_runtime_session_constructs_inference_sessions():
    makers = sorted(str(path.relative_to(PACKAGE.parent)) for path in PACKAGE.rglob("*.py")
                    if "InferenceSession(" in path.read_text(encoding="utf-8"))
    others = [m for m in makers if PACKAGE.parent / m != SESSION_MAKER]
    assert not others, f"InferenceSession built outside edgekd/runtime/session.py: {', '.join(others)}"
    assert makers == ["edgekd/runtime/session.py"]


def test_cpu_session_sets_only_the_given_options(tmp_path):
    from onnx import TensorProto, helper

    from edgekd.runtime.session import cpu_options, cpu_session

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    path = tmp_path / "relu.onnx"
    path.write_bytes(model.SerializeToString())
    for source in (path, model.SerializeToString()):
        session = cpu_session(source, graph_optimization="disable", threads=1, log_severity=3)
        assert session.get_providers() == ["CPUExecutionProvider"]
        (y,) = session.run(None, {"x": np.array([-1.0, 2.0], np.float32)})
        np.testing.assert_array_equal(y, [0.0, 2.0])
    import onnxruntime as ort

    given = cpu_options(graph_optimization="disable", threads=2, log_severity=4)
    assert (given.graph_optimization_level, given.intra_op_num_threads, given.log_severity_level) == \
        (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, 2, 4)
    default, plain = ort.SessionOptions(), cpu_options()  # nothing given: ONNX Runtime's defaults
    assert (plain.graph_optimization_level, plain.intra_op_num_threads, plain.log_severity_level) == \
        (default.graph_optimization_level, default.intra_op_num_threads, default.log_severity_level)
