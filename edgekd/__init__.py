"""edgekd: teacher -> distill -> prune -> int8 ONNX -> benchmark, from one recipe.

The Python API is `edgekd.compress`, `edgekd.export` and `edgekd.bench` (edgekd/api.py).
Importing edgekd loads neither torch nor onnxruntime; each stage imports what it needs.
"""

from edgekd.api import bench, compress, export
from edgekd.version import __version__

__all__ = ["__version__", "bench", "compress", "export"]
