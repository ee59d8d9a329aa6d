"""Where tensors live, chosen in one place: the device a setting (``auto | cpu | cuda | cuda:N``) names, and the
mixed precision that device supports. Nothing else in medseg calls ``.cuda()``."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from medseg.config.schema import DEVICE_PATTERN
from medseg.core.errors import ConfigError


def resolve_device(setting: str, option: str = "--device") -> torch.device:
    """``auto`` = the current CUDA GPU when there is one, else the CPU; ConfigError naming ``option`` for a device
    this machine does not have."""
    if not re.match(DEVICE_PATTERN, setting or ""):
        raise ConfigError(f"{option} {setting}: expected auto, cpu, cuda or cuda:N")
    if setting == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if setting == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"{option} {setting}: no CUDA GPU on this machine (PyTorch sees none); use cpu or auto")
    device = torch.device(setting)
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ConfigError(f"{option} {setting}: this machine has {count} GPU(s); choose cuda:0..cuda:{count - 1}")
    return device


@dataclass(frozen=True)
class Precision:
    """Autocast settings for one device: bf16 where it is native, fp16 with a gradient scaler on older GPUs."""

    device_type: str
    dtype: torch.dtype | None  # None: fp32

    @property
    def enabled(self) -> bool:
        return self.dtype is not None

    @property
    def needs_scaler(self) -> bool:
        return self.dtype == torch.float16

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device_type, dtype=self.dtype or torch.float32, enabled=self.enabled)

    @property
    def name(self) -> str:
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.dtype, "fp32")


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 / AMX: bf16 autocast is fast (emulated bf16 measured ~20x slower than fp32 elsewhere)."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def precision_for(device: torch.device, setting: bool | str) -> Precision:
    """Mixed precision for ``device``: ``auto`` (or ``True``) = bf16 on a CPU with native bf16 and on GPUs that
    support it, fp16 with a gradient scaler on other GPUs, fp32 on other CPUs; ``False`` = fp32."""
    if setting is False:
        return Precision(device.type, None)
    if device.type == "cuda":
        return Precision("cuda", torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    if setting == "auto":
        return Precision("cpu", torch.bfloat16 if cpu_has_native_bf16() else None)
    return Precision("cpu", torch.bfloat16)
