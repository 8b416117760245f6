"""Static costs: parameters and MACs (PyTorch), file size and parameters (ONNX), peak memory (ORT)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import onnx

from ..config import HardwareProfile
from ..profiling.cold import weight_tensors


def count_params_macs(model, example_input) -> tuple[int, int]:
    """(parameters, MACs) with Torch-Pruning's counter (one multiply-accumulate = one MAC)."""
    import torch
    import torch_pruning as tp

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            macs, params = tp.utils.count_ops_and_params(model, example_input)
    finally:
        model.train(was_training)
    return int(params), int(macs)


def _external_files(path: Path) -> list[Path]:
    m = onnx.load(str(path), load_external_data=False)
    files = set()
    for t in m.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            for e in t.external_data:
                if e.key == "location":
                    files.add(path.parent / e.value)
    return sorted(files)


def file_size_mb(path) -> float:
    """Bytes of the .onnx file plus any external-data files it names, / 1e6."""
    p = Path(path)
    total = p.stat().st_size
    for f in _external_files(p):
        if f.is_file():
            total += f.stat().st_size
    return total / 1e6


def onnx_param_count(path) -> int:
    """Elements of all weights (initializers and Constant-folded tensors; int8 weights count once, scales/zero
    points too: quantization parameters are scalars or per-channel vectors, a rounding error next to the weights)."""
    return sum(n for n, _ in weight_tensors(path))


_PEAK_SCRIPT = r"""
import json, resource, sys
import numpy as np
from autocompress.config import HardwareProfile
from autocompress.measure import hardware

def status(key):  # kB fields of /proc/self/status (Linux)
    try:
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return float(line.split()[1]) * 1024
    except OSError:
        return None

prof = HardwareProfile.model_validate(json.loads(sys.argv[2]))
shape = json.loads(sys.argv[3])
try:  # Linux >= 4.0: reset the peak-RSS mark so import-time peaks do not hide the session's
    open("/proc/self/clear_refs", "w").write("5")
    reset = True
except OSError:
    reset = False
rss0 = status("VmRSS")
scale = 1024.0 if sys.platform != "darwin" else 1.0   # ru_maxrss: KiB on Linux, bytes on macOS
max0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
sess = hardware.make_session(sys.argv[1], prof)
x = np.random.default_rng(0).standard_normal(shape).astype(hardware.input_dtype(sess))
for _ in range(3):
    sess.run(None, {sess.get_inputs()[0].name: x})
hwm = status("VmHWM")
if reset and rss0 is not None and hwm is not None:
    peak = hwm - rss0
else:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale - max0
print(json.dumps({"peak_mb": peak / 1e6}))
"""


def peak_memory_mb(path, profile: HardwareProfile, input_shape: Sequence[int], timeout: float = 120.0) -> float | None:
    """Peak resident-memory growth (MB) of creating a session for the model and running it, or None.

    ONNX Runtime has no portable peak-memory API on the CPU EP, so this measures it from outside: a fresh
    Python process imports numpy/onnxruntime, resets its peak-RSS mark (Linux ``/proc/self/clear_refs``),
    notes its RSS, creates the session as the profile says, runs 3 inferences and reads the peak RSS
    (``VmHWM``); the figure is the difference (elsewhere: growth of ``ru_maxrss``, which an import-time
    peak can hide, so it can read low). It
    includes the model's weights (as loaded and as repacked by ORT: prepacked int8/fp32 weights can double
    them), the arena's activation buffers and the thread pool; it excludes the interpreter and libraries.
    The figure is host memory only (a GPU EP's device memory is not seen) and is rounded by the kernel's
    page accounting. Returns None where ``resource`` is missing (Windows) or the subprocess fails.
    """
    try:
        import resource  # noqa: F401  (POSIX only)
    except ImportError:
        return None
    env = dict(os.environ)
    pkg_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = pkg_root + os.pathsep + env.get("PYTHONPATH", "")
    try:
        out = subprocess.run(
            [sys.executable, "-c", _PEAK_SCRIPT, str(path), profile.model_dump_json(), json.dumps(list(input_shape))],
            capture_output=True, text=True, timeout=timeout, env=env,
        )
    except (subprocess.TimeoutExpired, OSError):
        return None
    if out.returncode != 0:
        return None
    try:
        return max(0.0, float(json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]))
    except (ValueError, KeyError, IndexError):
        return None
