"""What ONNX Runtime really runs: the tests that check int8 kernels read the optimized graph."""

from __future__ import annotations

import onnx
import onnxruntime as ort


def optimized_ops(path, tmp_path) -> list[str]:
    """Op types per node of the model as ONNX Runtime runs it (after its graph optimizations)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
