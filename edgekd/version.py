"""The package version, in a module of its own: modules that record it (ONNX metadata, --version)
import it from here, not from the package __init__, which imports the API and so every stage."""

__version__ = "0.1.0"
