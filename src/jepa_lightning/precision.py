"""bf16 on a CPU without native bf16: fall back to 32-bit instead of crawling.

A CPU without bf16 instructions emulates every bf16 matmul and convolution in software: the
CIFAR-10 configs (``precision: bf16-mixed``, ``accelerator: auto``) had not finished their
two-batch sanity check after 11 minutes on an AVX2 machine, and train at normal speed in 32-bit.
The CLI therefore runs such a config in 32-bit on such a CPU, with one warning; set
``JEPA_FORCE_CPU_BF16=1`` to keep bf16 anyway.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.accelerators.cuda import CUDAAccelerator
from lightning.fabric.accelerators.mps import MPSAccelerator
from lightning.fabric.accelerators.xla import XLAAccelerator
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.utilities import rank_zero_warn

#: Environment variable that keeps bf16 on a CPU without native bf16 (``1``, ``true``, ``yes``).
FORCE_ENV = "JEPA_FORCE_CPU_BF16"

#: Precision flags that run in bf16 on a CPU (Lightning turns ``16-mixed`` into ``bf16-mixed``
#: there: CPU autocast has no fp16).
CPU_BF16_PRECISIONS = frozenset({"bf16", "bf16-mixed", "bf16-true", "16", "16-mixed"})

#: ``/proc/cpuinfo`` flags of native bf16 arithmetic: x86 AVX512-BF16 and AMX-BF16, Arm BF16.
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def _cpuinfo_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86 / Arm
            flags.update(value.split())
    return flags


def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bf16 arithmetic (x86 AVX512-BF16 or AMX, Arm BF16).

    ``torch.backends.cpu.get_cpu_capability()`` cannot tell: it reports the vector ISA torch
    dispatches to (``"AVX512"`` on a CPU with AVX512-BF16 and AMX too). Torch's own cpuinfo
    probes (``torch.cpu._is_avx512_bf16_supported``, ``_is_amx_tile_supported``) are asked
    first, then the Linux ``/proc/cpuinfo`` flags, then macOS's ``hw.optional.arm.FEAT_BF16``.
    """
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        probe = getattr(torch.cpu, name, None)
        try:
            if probe is not None and probe():
                return True
        except (RuntimeError, AttributeError):  # a private API: absent or failing is "no"
            pass
    if _cpuinfo_flags() & BF16_CPU_FLAGS:
        return True
    if platform.system() == "Darwin":
        try:
            out = subprocess.run(
                ["sysctl", "-n", "hw.optional.arm.FEAT_BF16"],
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            return False
        return out.stdout.strip() == "1"
    return False


def resolves_to_cpu(accelerator: Any) -> bool:
    """Whether a ``Trainer(accelerator=...)`` value runs on the CPU, ``"auto"`` resolved as
    Lightning resolves it (TPU, then MPS, then CUDA, else CPU)."""
    if isinstance(accelerator, str):
        name = accelerator.lower()
        if name == "auto":
            available = (XLAAccelerator, MPSAccelerator, CUDAAccelerator)
            return not any(a.is_available() for a in available)
        return name == "cpu"
    if isinstance(accelerator, CPUAccelerator):
        return True
    class_path = getattr(accelerator, "class_path", None)  # a class_path/init_args namespace
    return isinstance(class_path, str) and class_path.rsplit(".", 1)[-1] == "CPUAccelerator"


def forced() -> bool:
    """Whether ``JEPA_FORCE_CPU_BF16`` asks to keep bf16 on a CPU without native bf16."""
    return os.environ.get(FORCE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def cpu_precision_fallback(accelerator: Any, precision: Any) -> str | None:
    """The precision to run instead of ``precision``, or ``None`` to keep it.

    ``"32-true"`` (with one warning saying why and how to force bf16) when ``precision`` is a
    bf16 flag, ``accelerator`` resolves to the CPU, the CPU has no native bf16
    (:func:`cpu_supports_bf16`) and ``JEPA_FORCE_CPU_BF16`` is not set.
    """
    flag = str(precision).lower() if precision is not None else ""
    if flag not in CPU_BF16_PRECISIONS or not resolves_to_cpu(accelerator):
        return None
    if cpu_supports_bf16() or forced():
        return None
    rank_zero_warn(
        f"precision={precision!r} on a CPU without native bf16 support (no AVX512-BF16, AMX "
        "or Arm BF16 instructions): bf16 would be emulated in software, many times slower "
        "than 32-bit, so this run uses precision='32-true' instead. To keep bf16 anyway, set "
        f"the environment variable {FORCE_ENV}=1; to silence this, pass --trainer.precision 32."
    )
    return "32-true"
