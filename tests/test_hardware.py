"""Hardware profiles in practice: providers, sessions built as the profile says, one-line errors."""

from __future__ import annotations

import os
import time
from pathlib import Path

import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

from autocompress.config import HardwareProfile, load_profile, parse
from autocompress.errors import ConfigError, StageError, UnavailableError
from autocompress.measure import hardware


def _export(tmp_path, name="m.onnx"):
    p = tmp_path / name
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)).eval()
    torch.onnx.export(m, torch.randn(1, 3, 8, 8), p, dynamo=False, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return p


def test_cpu_is_available():
    assert "CPUExecutionProvider" in hardware.available_providers()
    prof, _ = load_profile("cpu")
    hardware.check_available(prof)  # no error


def test_cuda_profile_validates_everywhere_and_says_what_to_do():
    prof, path = load_profile("cuda-fp16")
    assert prof.execution_provider == "CUDAExecutionProvider" and prof.batch_size == 32
    if "CUDAExecutionProvider" in hardware.available_providers():
        pytest.skip("CUDA EP present: the 'unavailable' message is not reachable here")
    with pytest.raises(UnavailableError) as e:
        hardware.check_available(prof)
    msg = str(e.value)
    assert "\n" not in msg
    assert "profile 'cuda-fp16' needs CUDAExecutionProvider" in msg
    assert "CPUExecutionProvider" in msg and "onnxruntime-gpu" in msg and "--profile cpu" in msg


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["cuda-fp16", "tensorrt-fp16"])
def test_gpu_profiles_make_sessions(tmp_path, name):
    prof, _ = load_profile(name)
    try:
        hardware.check_available(prof)
    except UnavailableError as e:
        pytest.skip(str(e))
    sess = hardware.make_session(_export(tmp_path), prof)
    assert sess.get_providers()[0] == prof.execution_provider


def test_an_ep_listed_but_not_starting_here_is_refused_in_one_line(monkeypatch):
    """onnxruntime-gpu lists TensorrtExecutionProvider whether or not TensorRT is installed (seen on an H200 with
    no libnvinfer): a one-node session on the EP says so before any work, with ORT's own reason in the line."""
    monkeypatch.setattr(hardware, "available_providers", lambda: ["FooExecutionProvider", "CPUExecutionProvider"])
    prof = HardwareProfile(name="npu", execution_provider="FooExecutionProvider")
    with pytest.raises(UnavailableError) as e:
        hardware.check_available(prof)
    msg = str(e.value)
    assert "\n" not in msg
    assert "profile 'npu': FooExecutionProvider is in this onnxruntime but did not start here" in msg
    assert "fell back to CPUExecutionProvider: EP Error" in msg and msg.endswith("or pick --profile cpu")


def test_unknown_ep_is_unavailable_and_bad_ep_name_is_a_config_error():
    prof = HardwareProfile(name="npu", execution_provider="FooExecutionProvider")
    with pytest.raises(UnavailableError, match="needs FooExecutionProvider"):
        hardware.check_available(prof)
    with pytest.raises(ConfigError, match="not an ONNX Runtime execution provider"):
        parse(HardwareProfile, {"execution_provider": "cuda"}, "p.yaml")


def test_batch_size_must_be_positive():
    with pytest.raises(ConfigError) as e:
        parse(HardwareProfile, {"batch_size": 0}, "p.yaml")
    assert "p.yaml: batch_size: got 0" in str(e.value)


def test_session_options_follow_the_profile():
    prof = HardwareProfile(intra_op_threads=1, inter_op_threads=2, graph_optimization_level="basic",
                           execution_mode="parallel")
    so = hardware.session_options(prof)
    assert so.intra_op_num_threads == 1 and so.inter_op_num_threads == 2
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert so.execution_mode == ort.ExecutionMode.ORT_PARALLEL
    assert so.log_severity_level == 3
    assert hardware.session_options(HardwareProfile()).intra_op_num_threads == 0


def test_make_session_and_its_errors(tmp_path):
    prof = HardwareProfile()
    sess = hardware.make_session(_export(tmp_path), prof)
    assert sess.get_providers() == ["CPUExecutionProvider"]
    with pytest.raises(StageError, match="session: ONNX model .* not found"):
        hardware.make_session(tmp_path / "missing.onnx", prof)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(StageError) as e:
        hardware.make_session(bad, prof)
    assert e.value.stage == "session" and "bad.onnx" in str(e.value) and "\n" not in str(e.value)


def test_input_shape_and_check(tmp_path):
    assert hardware.input_shape_for(HardwareProfile(batch_size=4), (3, 32, 32)) == (4, 3, 32, 32)
    assert hardware.input_shape_for(HardwareProfile(input_shape=[1, 16, 16]), (3, 32, 32)) == (1, 1, 16, 16)
    sess = hardware.make_session(_export(tmp_path), HardwareProfile())
    hardware.check_input_shape(sess, (5, 3, 8, 8), "latency")
    with pytest.raises(StageError, match=r"expects input 'input' of shape \[batch, 3, 8, 8\], given \[1, 3, 9, 9\]"):
        hardware.check_input_shape(sess, (1, 3, 9, 9), "latency")


def test_supported_precisions():
    assert hardware.supported_precisions(HardwareProfile(precisions=["fp32", "fp16", "int8"])) == ["fp32", "int8"]
    cuda, _ = load_profile("cuda-fp16")
    assert hardware.supported_precisions(cuda) == ["fp32", "fp16"]
    trt, _ = load_profile("tensorrt-fp16")
    assert hardware.supported_precisions(trt) == ["fp32", "fp16", "int8"]


def test_fingerprint():
    fp = hardware.fingerprint()
    for k in ("cpu", "cpu_flags", "cores", "ram_gb", "os", "python", "torch", "onnxruntime", "onnx", "optuna",
              "load_avg_1m"):
        assert k in fp
    assert fp["onnxruntime"] == ort.__version__ and fp["cores"] >= 1


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs Linux /proc/stat")
def test_machine_window_sees_another_process_using_the_cpu():
    """A window during which another process burns a core reports its share and is flagged disturbed;
    this process's own work does not count as a disturbance."""
    import subprocess
    import sys

    from autocompress.measure.hardware import MachineWindow

    w = MachineWindow()
    subprocess.run([sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<1.0: pass"], check=True)
    busy = w.stop()
    assert busy["others_pct"] >= 100 * 0.5 / (os.cpu_count() or 1) * 0.6  # one core of N, generous margin
    assert busy["disturbed"] is True
    assert busy["window_s"] >= 1.0 and "steal_pct" in busy and busy["load_avg"] >= 0

    w = MachineWindow()
    t = time.time()
    while time.time() - t < 0.5:  # our own work
        pass
    own = w.stop()
    assert own["others_pct"] < busy["others_pct"]
