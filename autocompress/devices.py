"""Where training runs: ``--train-device auto|cpu|cuda`` (teacher training, teacher logits, distillation).

Export, quantization and ONNX Runtime accuracy and latency do not use it: they run where the hardware
profile says. On CUDA, training uses mixed precision (bf16 where the GPU supports it, else fp16 with a
gradient scaler); models go back to the CPU when a stage ends.
"""

from __future__ import annotations

from contextlib import nullcontext

from .errors import ConfigError

CHOICES = ("auto", "cpu", "cuda")


def infer_batch(device: str = "cpu") -> int:
    """The batch for PyTorch inference without grad (teacher logits, accuracy, the sensitivity points): 64 on a CPU,
    256 on a GPU. On these 2-core CPUs a batch of 256 ran the custom CNN (depthwise + squeeze-excitation, 32 px)
    2-3x slower than 32-64 (its activations leave the cache), and resnet18 / mobilenet_v2 at 32 px ran the same
    at 64 as at 256 (benchmarks/README.md "Inference batch on the CPU")."""
    return 256 if str(device).startswith("cuda") else 64


def cuda_available() -> bool:
    import torch

    try:
        return bool(torch.cuda.is_available()) and torch.cuda.device_count() > 0
    except Exception:  # noqa: BLE001 - a broken driver is "no GPU"
        return False


def resolve_train_device(choice: str | None = "auto", *, where: str = "--train-device") -> str:
    """'auto' -> 'cuda' when a CUDA GPU is usable, else 'cpu'; 'cuda' without one -> ConfigError."""
    choice = (choice or "auto").lower()
    if choice not in CHOICES:
        raise ConfigError(f"{where} '{choice}': use one of {', '.join(CHOICES)}")
    if choice == "cpu":
        return "cpu"
    if cuda_available():
        return "cuda"
    if choice == "cuda":
        raise ConfigError(f"{where} cuda: no CUDA GPU is usable here (torch.cuda.is_available() is False); "
                          "use --train-device auto or cpu, or run on a machine with a GPU and a CUDA build of torch")
    return "cpu"


def amp_dtype(device: str):
    """The autocast dtype on ``device`` (None: full precision)."""
    import torch

    if not str(device).startswith("cuda"):
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: str):
    import torch

    dt = amp_dtype(device)
    return torch.autocast(device_type="cuda", dtype=dt) if dt is not None else nullcontext()


def grad_scaler(device: str):
    """A GradScaler for fp16 autocast; a disabled one (a pass-through) otherwise."""
    import torch

    return torch.amp.GradScaler("cuda", enabled=amp_dtype(device) == torch.float16)
