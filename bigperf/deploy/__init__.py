"""Deployment: ONNX export, a TensorRT lint, and the TensorRT engine builder and runner.

    from bigperf.deploy import export_onnx, verify_onnx, lint, build_engine, TRTModule

Names resolve on first use, so `import bigperf.deploy` pulls in neither onnx nor TensorRT.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "export_onnx": "bigperf.deploy.onnx", "OnnxExport": "bigperf.deploy.onnx",
    "verify_onnx": "bigperf.deploy.verify", "OnnxCheck": "bigperf.deploy.verify",
    "lint": "bigperf.deploy.lint", "Finding": "bigperf.deploy.lint",
    "Profile": "bigperf.deploy.profiles", "ProfileError": "bigperf.deploy.profiles",
    "build_engine": "bigperf.deploy.tensorrt", "TRTModule": "bigperf.deploy.tensorrt",
    "TensorRTUnavailable": "bigperf.deploy.trt_plan", "EngineVersionError": "bigperf.deploy.trt_plan",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'bigperf.deploy' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
