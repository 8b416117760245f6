"""The target as ONNX Runtime sees it: session settings read from a hardware profile, sessions, timing, fingerprint.

Torch-free and pydantic-free (numpy, onnxruntime, stdlib): this runs on an edge box that has only those.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import onnxruntime as ort

CPU_EP = "CPUExecutionProvider"
_OPT_LEVEL = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
_EXEC_MODE = {"sequential": ort.ExecutionMode.ORT_SEQUENTIAL, "parallel": ort.ExecutionMode.ORT_PARALLEL}
_ORT_TO_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
                 "tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(int32)": np.int32, "tensor(int64)": np.int64}


STATISTICS = ("median", "mean", "p90", "p10", "min")


def statistic_of(x, statistic: str, axis: int = -1):
    """A profile's latency statistic of timed blocks (p10 / min: the undisturbed cost where noise is one-sided)."""
    if statistic == "mean":
        return np.mean(x, axis=axis)
    if statistic == "p90":
        return np.percentile(x, 90, axis=axis)
    if statistic == "p10":
        return np.percentile(x, 10, axis=axis)
    if statistic == "min":
        return np.min(x, axis=axis)
    return np.median(x, axis=axis)


def blocks_for(statistic: str, n_blocks: int) -> int:
    """Blocks to time for ``statistic``: a low quantile needs more of them than a median does."""
    return n_blocks if statistic == "median" else max(2 * n_blocks, 10)


def _statistic(latency, direct=None) -> str:
    """A profile's latency.statistic (a LatencySpec, a dict from YAML, or None: the median), or a table's target's."""
    if direct is not None:
        st = direct
    elif latency is None:
        return "median"
    else:
        st = latency.get("statistic", "median") if isinstance(latency, dict) else getattr(latency, "statistic", "median")
    return str(st) if str(st) in STATISTICS else "median"


class TargetError(Exception):
    """Bad target settings or an unavailable execution provider (one line, with what to do)."""


@dataclass(frozen=True)
class Target:
    """What a lookup table depends on: the ONNX Runtime session a profile builds (a HardwareProfile's fields)."""

    name: str = "custom"
    execution_provider: str = CPU_EP
    provider_options: dict = field(default_factory=dict)
    intra_op_threads: int = 0
    inter_op_threads: int = 1
    graph_optimization_level: str = "all"
    execution_mode: str = "sequential"
    batch_size: int = 1
    precisions: tuple = ("fp32", "int8")
    statistic: str = "median"  # what the profile reports of a whole model's timed blocks (its latency.statistic)

    @classmethod
    def from_profile(cls, profile) -> "Target":
        """From a HardwareProfile, or a plain dict (a profile YAML read without the full install)."""
        get = profile.get if isinstance(profile, dict) else (lambda k, d=None: getattr(profile, k, d))
        t = cls(name=str(get("name", "custom")), execution_provider=str(get("execution_provider", CPU_EP)),
                provider_options=dict(get("provider_options", None) or {}),
                intra_op_threads=int(get("intra_op_threads", 0)), inter_op_threads=int(get("inter_op_threads", 1)),
                graph_optimization_level=str(get("graph_optimization_level", "all")),
                execution_mode=str(get("execution_mode", "sequential")), batch_size=int(get("batch_size", 1)),
                precisions=tuple(get("precisions", None) or ("fp32", "int8")),
                statistic=_statistic(get("latency", None), get("statistic", None)))
        if t.graph_optimization_level not in _OPT_LEVEL:
            raise TargetError(f"profile '{t.name}': graph_optimization_level '{t.graph_optimization_level}' is not one of "
                              f"{', '.join(_OPT_LEVEL)}")
        if t.execution_mode not in _EXEC_MODE:
            raise TargetError(f"profile '{t.name}': execution_mode '{t.execution_mode}' is not sequential or parallel")
        return t

    def settings(self) -> dict:
        """The fields a table must agree on to be used for this target."""
        d = asdict(self)
        d.pop("name")
        d["precisions"] = list(self.precisions)
        return d

    @property
    def clock(self) -> str:
        """How the table times: this thread's CPU time with one intra-op thread (ORT computes on the calling
        thread, so other processes on a shared target do not count), wall time otherwise."""
        return "cpu" if self.intra_op_threads == 1 and self.execution_provider == CPU_EP else "wall"

    @property
    def int8(self) -> bool:
        return "int8" in self.precisions and self.execution_provider in (CPU_EP, "TensorrtExecutionProvider")

    def session_options(self, *, optimized_path: str | None = None, profile_prefix: str | None = None) -> ort.SessionOptions:
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.intra_op_threads
        so.inter_op_num_threads = self.inter_op_threads
        so.graph_optimization_level = _OPT_LEVEL[self.graph_optimization_level]
        so.execution_mode = _EXEC_MODE[self.execution_mode]
        so.log_severity_level = 3
        if optimized_path:
            so.optimized_model_filepath = optimized_path
        if profile_prefix:
            so.enable_profiling = True
            so.profile_file_prefix = profile_prefix
        return so

    def check_available(self) -> None:
        have = ort.get_available_providers()
        if self.execution_provider not in have:
            raise TargetError(f"profile '{self.name}' needs {self.execution_provider}, which this onnxruntime does not "
                              f"have (available: {', '.join(have)}); install an onnxruntime build that ships it")

    def session(self, model: bytes | str, **kw) -> ort.InferenceSession:
        self.check_available()
        providers: list = [(self.execution_provider, dict(self.provider_options))]
        if self.execution_provider != CPU_EP:
            providers.append(CPU_EP)
        return ort.InferenceSession(model if isinstance(model, bytes) else str(model),
                                    sess_options=self.session_options(**kw), providers=providers)


def feeds_for(sess: ort.InferenceSession, seed: int = 0, shapes: dict | None = None) -> dict[str, np.ndarray]:
    """Random inputs of each input's dtype and shape: ``shapes[name]`` where given, else the input's own (a symbolic
    dimension is 1)."""
    rng = np.random.default_rng(seed)
    out = {}
    for inp in sess.get_inputs():
        dt = _ORT_TO_NUMPY.get(inp.type, np.float32)
        shape = list((shapes or {}).get(inp.name) or [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape])
        out[inp.name] = (rng.integers(0, 255, size=shape).astype(dt) if np.issubdtype(dt, np.integer)
                         else rng.standard_normal(shape).astype(dt))
    return out


def time_session(sess: ort.InferenceSession, feeds: dict, n_blocks: int, block_ms: float, warmup: int = 2,
                 clock: str = "wall", statistic: str = "median") -> float:
    """Per-run ms over ``n_blocks`` blocks of consecutive runs, each block lasting ~block_ms (IOBinding): the
    blocks' median, or the ``statistic`` a profile reports (p10: the undisturbed cost on shared cores).

    ``clock``: "wall" (perf_counter), or "cpu": this thread's CPU time, which with one intra-op thread is the
    inference's own time and does not count the time other processes held the core (a shared target)."""
    now = time.thread_time if clock == "cpu" else time.perf_counter
    b = sess.io_binding()
    for k, v in feeds.items():
        b.bind_cpu_input(k, v)
    for o in sess.get_outputs():
        b.bind_output(o.name)
    run = sess.run_with_iobinding
    for _ in range(warmup):
        run(b)
    probe = []
    for _ in range(3):
        t = time.perf_counter()
        run(b)
        probe.append(time.perf_counter() - t)
    k = int(min(10_000, max(1, round(block_ms / 1e3 / max(min(probe), 1e-7)))))
    blocks = []
    for _ in range(n_blocks):
        t = now()
        for _ in range(k):
            run(b)
        blocks.append((now() - t) / k * 1e3)
    return float(statistic_of(np.asarray(blocks), statistic))


def profile_nodes(sess_factory, feeds_fn, runs: int) -> tuple[list[dict], str]:
    """Run a fresh profiled session ``runs`` times; returns ([{name, op, args, durs_us}], optimized graph path)
    in execution order. ``sess_factory(optimized_path=..., profile_prefix=...)`` builds the session."""
    d = tempfile.mkdtemp(prefix="ac_prof_")
    opt = os.path.join(d, "optimized.onnx")
    try:
        sess = sess_factory(optimized_path=opt, profile_prefix=os.path.join(d, "trace"))
        feeds = feeds_fn(sess)
        for _ in range(max(1, runs)):
            sess.run(None, feeds)
        trace = sess.end_profiling()
        try:
            events = json.loads(Path(trace).read_text())
        finally:
            Path(trace).unlink(missing_ok=True)
    except BaseException:  # the caller removes the folder only once it has read the optimised graph
        shutil.rmtree(d, ignore_errors=True)
        raise
    nodes: dict[str, dict] = {}
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        name = e["name"][: -len("_kernel_time")]
        rec = nodes.setdefault(name, {"name": name, "op": e["args"].get("op_name", ""), "args": e["args"], "durs_us": []})
        rec["durs_us"].append(float(e["dur"]))
    return list(nodes.values()), opt


# ---------------------------------------------------------------- fingerprint
_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "neon", "asimd")


def _cpuinfo() -> tuple[str, list[str]]:
    model, flags = platform.processor() or platform.machine(), []
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, val = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and model in ("", platform.machine(), platform.processor()):
            model = val.strip()
        elif key in ("flags", "features") and not flags:
            have = set(val.split())
            flags = [f for f in _FLAGS if f in have]
    return model, flags


def cpu_flags() -> list[str]:
    """This machine's CPU flags among those a latency or int8 kernel choice depends on (``_FLAGS``)."""
    return _cpuinfo()[1]


def _ram_gb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)
    except (ValueError, OSError, AttributeError):
        return None


def package_version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def load_average() -> float:
    try:
        return float(os.getloadavg()[0])
    except (OSError, AttributeError):
        return float("nan")


def fingerprint() -> dict:
    """What this machine and software stack are: written beside every result and lookup table."""
    model, flags = _cpuinfo()
    return {"cpu": model, "cpu_flags": flags, "cores": os.cpu_count(), "ram_gb": _ram_gb(),
            "os": f"{platform.system()} {platform.release()}", "machine": platform.machine(),
            "python": sys.version.split()[0], "torch": package_version("torch"), "onnxruntime": ort.__version__,
            "onnx": package_version("onnx"), "optuna": package_version("optuna"),
            "providers": list(ort.get_available_providers()), "load_avg_1m": load_average()}
