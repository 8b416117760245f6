"""Hardware profiles in practice: which execution providers exist here, and ONNX Runtime sessions built
exactly as a :class:`~autocompress.config.HardwareProfile` says.

Every measurement (accuracy, latency, lookup tables) builds its sessions through :func:`make_session`,
so a profile is the single place that decides threads, graph optimisation level and provider options.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort

from ..config import HardwareProfile
from ..errors import StageError, UnavailableError

CPU_EP = "CPUExecutionProvider"

_OPT_LEVEL = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_EXEC_MODE = {"sequential": ort.ExecutionMode.ORT_SEQUENTIAL, "parallel": ort.ExecutionMode.ORT_PARALLEL}

# What each execution provider can run well; precisions a profile lists beyond these are dropped.
# fp16 on the CPU EP: x86 builds of ONNX Runtime have no fp16 Conv kernel (only ARM64 builds do).
# int8 on the CUDA EP: QDQ graphs fall back to CPU kernels node by node; only TensorRT runs them.
_EP_PRECISIONS = {
    CPU_EP: ("fp32", "int8"),
    "CUDAExecutionProvider": ("fp32", "fp16"),
    "TensorrtExecutionProvider": ("fp32", "fp16", "int8"),
    "DmlExecutionProvider": ("fp32", "fp16"),
    "CoreMLExecutionProvider": ("fp32", "fp16"),
}

_HINTS = {
    "CUDAExecutionProvider": "install onnxruntime-gpu on a machine with an NVIDIA GPU",
    "TensorrtExecutionProvider": "install onnxruntime-gpu with TensorRT on a machine with an NVIDIA GPU",
    "OpenVINOExecutionProvider": "install onnxruntime-openvino",
    "DmlExecutionProvider": "install onnxruntime-directml on Windows",
}

_ORT_TO_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
}


def available_providers() -> list[str]:
    return list(ort.get_available_providers())


# What an EP that onnxruntime lists but cannot start usually lacks (onnxruntime-gpu lists TensorRT whether or not
# TensorRT's libraries are installed: seen on an H200 machine with CUDA 13 and no libnvinfer).
_START_HINTS = {
    "CUDAExecutionProvider": "check the NVIDIA driver and the CUDA 12/13 and cuDNN 9 libraries onnxruntime-gpu was built for",
    "TensorrtExecutionProvider": "install TensorRT (libnvinfer) where onnxruntime-gpu finds it",
}
_START_ALTERNATIVE = {"TensorrtExecutionProvider": "--profile cuda-fp16 or --profile cpu"}


def check_available(profile: HardwareProfile) -> None:
    """Raise :class:`UnavailableError` (one line, with what to do) if the profile's EP is not here, or is listed by
    onnxruntime but does not start (a one-node model is loaded on it once per process): before, such a profile
    got as far as the baseline's session after the teacher was trained."""
    ep = profile.execution_provider
    have = available_providers()
    if ep in have:
        if ep != CPU_EP:
            failed = _start_failure(ep, tuple(sorted((str(k), str(v)) for k, v in profile.provider_options.items())))
            if failed:
                hint = _START_HINTS.get(ep, "check that its libraries are installed")
                raise UnavailableError(f"profile '{profile.name}': {ep} is in this onnxruntime but did not start here "
                                       f"({failed}); {hint}, or pick {_START_ALTERNATIVE.get(ep, '--profile cpu')}")
        return
    hint = _HINTS.get(ep, f"install an onnxruntime build that ships {ep}")
    raise UnavailableError(
        f"profile '{profile.name}' needs {ep}, which this onnxruntime does not have "
        f"(available: {', '.join(have)}); {hint} or pick --profile cpu"
    )


@lru_cache(maxsize=None)
def _start_failure(ep: str, options: tuple[tuple[str, str], ...]) -> str | None:
    """Why ``ep`` does not start here (None: it does): a session of a one-node model on it. Also quiets onnxruntime's
    default logger to errors (sessions already log errors only): onnxruntime 1.31 warns "No registered plugin EP
    device found for 'CUDAExecutionProvider' with device_id=0" at every session, although the CUDA EP runs."""
    from onnx import TensorProto, helper

    ort.set_default_logger_severity(3)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = min(model.ir_version, 8)
    said = io.StringIO()  # ORT prints its "EP Error ..." banner when it falls back: its reason goes into the line
    try:
        with contextlib.redirect_stdout(said), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sess = ort.InferenceSession(model.SerializeToString(), providers=[(ep, dict(options)), CPU_EP])
    except Exception as e:  # ORT raises its own types; the reason goes into the one line
        return _one_line(e)
    got = sess.get_providers()
    if got and got[0] == ep:
        return None
    why = next((ln.strip() for ln in said.getvalue().splitlines() if ln.startswith("EP Error ")), "")
    return f"ONNX Runtime fell back to {got[0] if got else 'nothing'}" + (f": {why[:300]}" if why else "")


def session_options(profile: HardwareProfile) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(profile.intra_op_threads)  # 0 = ORT default
    so.inter_op_num_threads = int(profile.inter_op_threads)
    so.graph_optimization_level = _OPT_LEVEL[profile.graph_optimization_level]
    so.execution_mode = _EXEC_MODE[profile.execution_mode]
    so.log_severity_level = 3  # errors only: no warnings about unused initializers etc.
    return so


def make_session(path: str | os.PathLike | bytes, profile: HardwareProfile) -> ort.InferenceSession:
    """An InferenceSession on the profile's EP (CPU fallback only for non-CPU EPs)."""
    check_available(profile)
    ep = profile.execution_provider
    providers: list = [(ep, dict(profile.provider_options))]
    if ep != CPU_EP:
        providers.append(CPU_EP)
    src = path if isinstance(path, bytes) else str(path)
    if not isinstance(path, bytes) and not Path(src).is_file():
        raise StageError("session", f"ONNX model '{src}' not found")
    try:
        sess = ort.InferenceSession(src, sess_options=session_options(profile), providers=providers)
    except Exception as e:  # ORT raises its own Fail/InvalidGraph/... types
        name = "<bytes>" if isinstance(path, bytes) else Path(src).name
        raise StageError("session", f"ONNX Runtime could not load {name}: {_one_line(e)}") from None
    got = sess.get_providers()
    if got and got[0] != ep:
        raise UnavailableError(
            f"profile '{profile.name}': {ep} failed to initialise and ONNX Runtime fell back to {got[0]}; "
            "check the driver/CUDA install or pick --profile cpu"
        )
    return sess


def input_shape_for(profile: HardwareProfile, data_shape: Sequence[int]) -> tuple[int, int, int, int]:
    """(batch, C, H, W): the profile's batch and, when given, its input_shape override of the data's."""
    chw = tuple(profile.input_shape) if profile.input_shape else tuple(data_shape)
    if len(chw) != 3:
        raise StageError("input", f"data shape {tuple(data_shape)} is not (channels, height, width)")
    return (int(profile.batch_size), int(chw[0]), int(chw[1]), int(chw[2]))


def supported_precisions(profile: HardwareProfile) -> list[str]:
    """The profile's precisions that its EP can actually run (unknown EPs: trusted as written)."""
    ok = _EP_PRECISIONS.get(profile.execution_provider)
    if ok is None:
        return list(profile.precisions)
    return [p for p in profile.precisions if p in ok]


def input_dtype(session: ort.InferenceSession) -> np.dtype:
    t = session.get_inputs()[0].type
    return np.dtype(_ORT_TO_NUMPY.get(t, np.float32))


def check_input_shape(session: ort.InferenceSession, shape: Sequence[int], stage: str, what: str = "model") -> None:
    """StageError naming the expected vs the given shape when a fixed dimension disagrees."""
    inp = session.get_inputs()[0]
    want = list(inp.shape)
    given = tuple(int(d) for d in shape)
    bad = len(want) != len(given) or any(isinstance(w, int) and w > 0 and w != g for w, g in zip(want, given))
    if bad:
        shown = "[" + ", ".join(str(w) if isinstance(w, int) else f"{w}" for w in want) + "]"
        raise StageError(
            stage, f"{what} expects input '{inp.name}' of shape {shown}, given {list(given)}; "
            "check the profile's batch_size/input_shape and the data's image size"
        )


def _one_line(e: BaseException) -> str:
    s = " ".join(str(e).split())
    return s if len(s) <= 300 else s[:297] + "..."


# ---------------------------------------------------------------- fingerprint
# one torch-free implementation, shared with the target side (autocompress.profiling)
from ..profiling.target import fingerprint  # noqa: E402,F401


def load_average() -> float:
    try:
        return float(os.getloadavg()[0])
    except (OSError, AttributeError):
        return float("nan")


def _proc_stat_cpu() -> tuple[float, float, float] | None:
    """(busy, idle, steal) seconds summed over all CPUs since boot, from /proc/stat; None where unreadable."""
    try:
        with open("/proc/stat") as f:
            parts = f.readline().split()
    except OSError:
        return None
    if not parts or parts[0] != "cpu":
        return None
    v = [float(x) for x in parts[1:]] + [0.0] * 8
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    user, nice, system, idle, iowait, irq, softirq, steal = v[:8]
    return (user + nice + system + irq + softirq) / hz, (idle + iowait) / hz, steal / hz


def cpu_mhz() -> float | None:
    """Mean current clock of the CPUs (cpufreq where exposed, else /proc/cpuinfo); None where unreadable."""
    freqs = []
    for path in Path("/sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq/scaling_cur_freq"):
        try:
            freqs.append(float(path.read_text()) / 1000.0)
        except (OSError, ValueError):
            pass
    if not freqs:
        try:
            with open("/proc/cpuinfo") as f:
                freqs = [float(line.split(":")[1]) for line in f if line.startswith("cpu MHz")]
        except (OSError, ValueError, IndexError):
            return None
    return round(sum(freqs) / len(freqs), 1) if freqs else None


# A window is "disturbed" when, while it was timed, the hypervisor took more than this share of the CPUs
# (steal) or other processes used more than this share of them: its figures are then not precise.
STEAL_LIMIT = 0.02
OTHERS_LIMIT = 0.10


class MachineWindow:
    """What the machine did between ``start()`` and ``stop()``: load, CPU steal, the share of the CPUs used
    by other processes (all CPU time minus this process's), and the clock.

    ``stop()`` returns a dict written beside each latency figure; ``disturbed`` is True when steal or other
    processes exceeded :data:`STEAL_LIMIT` / :data:`OTHERS_LIMIT`, so a figure from that window is flagged
    instead of being presented as precise.
    """

    def __init__(self) -> None:
        import time

        self._clock = time.perf_counter
        self._t0 = self._clock()
        self._cpu0 = time.process_time()
        self._stat0 = _proc_stat_cpu()
        self._load0 = load_average()
        self._mhz0 = cpu_mhz()

    def stop(self) -> dict:
        import time

        wall = max(self._clock() - self._t0, 1e-9)
        own = time.process_time() - self._cpu0
        stat1 = _proc_stat_cpu()
        out: dict = {"load_avg": round(self._load0, 2), "mhz": self._mhz0, "window_s": round(wall, 3)}
        if self._stat0 is not None and stat1 is not None:
            busy, idle, steal = (b - a for a, b in zip(self._stat0, stat1))
            total = max(busy + idle + steal, 1e-9)
            out["steal_pct"] = round(100 * steal / total, 2)
            # /proc/stat ticks are coarse (10 ms): the others' share is clipped at 0 for short windows
            out["others_pct"] = round(100 * max(0.0, busy - own) / total, 2)
        mhz1 = cpu_mhz()
        if mhz1 is not None:
            out["mhz"] = round(min(mhz1, self._mhz0 or mhz1), 1)
        out["disturbed"] = bool(out.get("steal_pct", 0.0) > 100 * STEAL_LIMIT
                                or out.get("others_pct", 0.0) > 100 * OTHERS_LIMIT)
        return out
