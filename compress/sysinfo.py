"""The machine a benchmark ran on: CPU model and flags, cores, memory, OS, and the onnxruntime build
with the version behind each of its providers, so a number can be traced to the hardware that made it."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

# Instruction-set flags that decide which onnxruntime kernels run (shown in reports; all flags go in the JSON).
KEY_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
             "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16", "neon", "asimd", "asimddp", "sve", "i8mm", "bf16")
# pip packages that ship onnxruntime builds, one per provider family
ORT_PACKAGES = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml", "onnxruntime-qnn",
                "onnxruntime-rocm", "onnxruntime-migraphx", "onnxruntime-silicon", "onnxruntime-training")
# extra runtimes some providers load, whose versions matter as much as onnxruntime's
PROVIDER_RUNTIMES = {"TensorrtExecutionProvider": ("tensorrt",), "OpenVINOExecutionProvider": ("openvino",),
                     "QNNExecutionProvider": ("qnn-sdk",)}


def environment() -> dict:
    import numpy
    import onnx
    import onnxruntime as ort

    return {
        "cpu": cpu_info(),
        "memory_total_mb": _memory_total_mb(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "packages": {"onnxruntime": ort.__version__, "onnx": onnx.__version__, "numpy": numpy.__version__,
                     **{name: version for name in ORT_PACKAGES if (version := _version(name))}},
        "onnxruntime": {
            "version": ort.__version__, "device": ort.get_device(), "build": ort.get_build_info(),
            "available_providers": ort.get_available_providers(),
            "provider_versions": {p: provider_version(p) for p in ort.get_available_providers()},
        },
    }


def provider_version(provider: str) -> str:
    """The package (and, for GPU builds, the CUDA/cuDNN it was built with) behind one provider."""
    import onnxruntime as ort
    from onnxruntime.capi import build_and_package_info as build

    package = getattr(build, "package_name", "onnxruntime")
    text = f"{package} {ort.__version__}"
    if provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
        for field in ("cuda_version", "cudnn_version"):
            if getattr(build, field, None):
                text += f", {field.split('_')[0]} {getattr(build, field)}"
    for runtime in PROVIDER_RUNTIMES.get(provider, ()):
        if version := _version(runtime):
            text += f", {runtime} {version}"
    return text


def cpu_info() -> dict:
    info = {"model": platform.processor() or platform.machine(), "architecture": platform.machine(), "flags": [],
            "logical_cores": os.cpu_count(), "physical_cores": None,
            "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()}
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        info.update(_linux_cpu(cpuinfo.read_text(errors="replace")))
    elif sys.platform == "darwin":
        info.update(_mac_cpu())
    info["key_flags"] = [flag for flag in KEY_FLAGS if flag in info["flags"]]
    return info


def _linux_cpu(text: str) -> dict:
    result, cores = {}, set()
    physical = None
    for line in text.splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key in ("model name", "Model", "cpu model") and "model" not in result:
            result["model"] = value
        elif key in ("flags", "Features") and "flags" not in result:
            result["flags"] = value.split()
        elif key == "physical id":
            physical = value
        elif key == "core id":
            cores.add((physical, value))
    if cores:
        result["physical_cores"] = len(cores)
    return result


def _mac_cpu() -> dict:
    def sysctl(name: str) -> str:
        try:
            return subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    flags = (sysctl("machdep.cpu.features") + " " + sysctl("machdep.cpu.leaf7_features")).lower().split()
    physical = sysctl("hw.physicalcpu")
    return {"model": sysctl("machdep.cpu.brand_string") or platform.processor(), "flags": flags,
            "physical_cores": int(physical) if physical.isdigit() else None}


def _memory_total_mb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20, 1)
    except (ValueError, OSError, AttributeError):
        return None


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None
