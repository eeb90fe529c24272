"""The edge-app tests' shared pieces: edge_demo's Python files (web/serve.py, web/headless.py, python/classify.py),
loaded as modules from their files (the folders are apps, not packages)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

EDGE_DEMO = Path(__file__).resolve().parents[1] / "edge_demo"
WEB = EDGE_DEMO / "web"


def _load(path: Path, module_name: str):
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_web_module(name: str):
    """edge_demo/web/<name>.py as a module."""
    return _load(WEB / f"{name}.py", f"edge_web_{name}")


def load_python_app():
    """edge_demo/python/classify.py as a module (its Bundle class, its preprocessing)."""
    return _load(EDGE_DEMO / "python" / "classify.py", "edge_classify")


def probability_atol(int8_full_range_weights: bool) -> float:
    """How far onnxruntime-web's probabilities may be from onnxruntime's in Python: 1e-4 where both run the same
    arithmetic; 0.05 for a u8s8 int8 model with full-range (8-bit) weights on an x86 CPU without VNNI, where
    onnxruntime's AVX2 kernels saturate the int16 sums of u8 x s8 pairs and WebAssembly's kernels do not
    (quantize.reduce_range=true makes them agree again)."""
    from compress.quant_analysis import X86_ARCHITECTURES, cpu_int8_support

    support = cpu_int8_support()
    x86 = support["architecture"] in X86_ARCHITECTURES
    return 0.05 if int8_full_range_weights and x86 and not support["flags"] else 1e-4
