"""The browser tests' shared pieces: edge_demo/web's Python modules (serve, headless), loaded from their files."""
from __future__ import annotations

import importlib.util
from pathlib import Path

WEB = Path(__file__).resolve().parents[1] / "edge_demo" / "web"


def load_web_module(name: str):
    """edge_demo/web/<name>.py as a module (the folder is an app, not a package)."""
    spec = importlib.util.spec_from_file_location(f"edge_web_{name}", WEB / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
