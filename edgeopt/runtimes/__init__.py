"""Backends: ONNX Runtime (default), TVM, TFLite/LiteRT, Core ML. See base.py."""

from edgeopt.runtimes.base import Backend, CompileInput, CompileResult, Session, backend_names, get_backend

__all__ = ["Backend", "CompileInput", "CompileResult", "Session", "backend_names", "get_backend"]
