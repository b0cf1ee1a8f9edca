"""Backends: ONNX Runtime (default), TVM, TFLite/LiteRT, Core ML, ExecuTorch. See base.py; the capability table is table.py."""

from edgeopt.runtimes.base import (
    Backend,
    CompileInput,
    CompileResult,
    Mode,
    Session,
    backend_names,
    get_backend,
)

__all__ = ["Backend", "CompileInput", "CompileResult", "Mode", "Session", "backend_names", "get_backend"]
