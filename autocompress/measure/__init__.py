"""Measurement of the deployable ONNX artifact: accuracy, latency (measured or predicted), cost, hardware.

Nothing here imports torch at module level (cost.count_params_macs imports it when called).
"""

from .accuracy import AccuracyResult, evaluate_onnx, load_metric
from .cost import count_params_macs, file_size_mb, onnx_param_count, peak_memory_mb
from .hardware import (
    available_providers,
    check_available,
    fingerprint,
    input_shape_for,
    make_session,
    session_options,
    supported_precisions,
)
from .latency import LatencyResult, measure_latency

__all__ = [
    "AccuracyResult", "evaluate_onnx", "load_metric",
    "count_params_macs", "file_size_mb", "onnx_param_count", "peak_memory_mb",
    "available_providers", "check_available", "fingerprint", "input_shape_for", "make_session",
    "session_options", "supported_precisions",
    "LatencyResult", "measure_latency",
]
