"""What this machine offers, read without TensorFlow (the command-line
scripts ask before TensorFlow starts): an NVIDIA driver, native bfloat16
arithmetic, an x86 CPU."""

import os
import platform

# CPU flags (Linux /proc/cpuinfo) of native bfloat16 arithmetic.
CPU_BFLOAT16_FLAGS = ("avx512_bf16", "amx_bf16")


def nvidia_driver_present():
    """True when an NVIDIA driver is loaded: its /proc entry or device
    nodes exist (WSL: /dev/dxg)."""
    return any(os.path.exists(p) for p in ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/nvidia0",
                                           "/dev/dxg"))


def cpu_has_native_bfloat16(cpuinfo="/proc/cpuinfo"):
    """Whether the CPU computes in bfloat16 natively (Linux: its flags)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return any(flag in flags for flag in CPU_BFLOAT16_FLAGS)


def x86_cpu():
    """Whether this is an x86-64 machine (where TensorFlow's oneDNN kernels
    run)."""
    return platform.machine().lower() in ("x86_64", "amd64")
