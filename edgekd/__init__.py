"""edgekd: teacher -> distill -> int8 ONNX -> benchmark, from one recipe.

Importing edgekd loads neither torch nor onnxruntime; each stage imports what it needs.
"""

__version__ = "0.1.0"
