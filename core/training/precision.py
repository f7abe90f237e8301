"""`train.precision: bf16`: what leaves an autocast region, and whether the device computes bf16 natively.

Autocast runs on any CPU: where the CPU has no bf16 instructions (AVX512-BF16 or AMX on x86), oneDNN
converts to and from fp32 around every operation and the step gets slower, not faster. Measured on a
2-core Intel Xeon (Ice Lake: AVX512, no AVX512-BF16) with a ResNet-18 at 112 px, batch 32: fp32 35-41
samples/s, bf16 21-22 (0.55-0.6x); on CPUs with bf16 the demo step ran 1.3x faster and Kosti 2x.
"""
from __future__ import annotations

import platform
from typing import Any

X86_MACHINES = ("x86_64", "amd64", "i386", "i686")


def output_in_fp32(output: Any) -> Any:
    """A model's output (a ModelOutput, a tensor, or a dict or tuple of them) with every floating
    tensor in fp32: what leaves an autocast region in bf16 enters the criterion in fp32."""
    import torch

    if isinstance(output, torch.Tensor):
        return output.float() if output.is_floating_point() else output
    if isinstance(output, dict):
        return {key: output_in_fp32(value) for key, value in output.items()}
    if isinstance(output, tuple):
        values = [output_in_fp32(value) for value in output]
        return type(output)._make(values) if hasattr(output, "_make") else type(output)(values)
    return output


def native_bf16(device_type: str) -> bool | None:
    """Whether `device_type` ("cpu", "cuda", ...) computes bf16 in hardware; None where torch cannot
    tell (another accelerator, a CPU other than x86, a torch without the probes)."""
    import torch

    if device_type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device_type != "cpu" or platform.machine().lower() not in X86_MACHINES:
        return None
    # torch's own CPU-capability probes (private, so looked up rather than assumed)
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if any(probe is None for probe in probes):
        return None
    return any(probe() for probe in probes)


def bf16_warning(device_type: str) -> str | None:
    """The line a worker prints when `train.precision: bf16` meets a device without bf16 arithmetic."""
    if native_bf16(device_type) is not False:
        return None
    what = "a CPU without AVX512-BF16 or AMX" if device_type == "cpu" else f"a {device_type} device without bf16"
    return (f"[train] warning: train.precision is bf16 on {what}: autocast emulates bf16 there, which is "
            "usually slower than fp32 (a ResNet-18 step measured 0.55-0.6x); set "
            "train.precision: fp32 on this machine")
