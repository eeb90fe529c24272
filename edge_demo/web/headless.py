"""Debian's Chromium, headless, driven by selenium through the system chromedriver: for the browser
test and the benchmark. Nothing is downloaded: selenium is pointed at /usr/bin's browser and driver."""
from __future__ import annotations

import importlib.util
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")


def missing_tools() -> list[str]:
    """What is absent for a browser run: the browser, its driver, selenium or onnxruntime-web's files."""
    missing = [f"{path} (apt-get install -y chromium chromium-driver)" for path in (CHROMIUM, CHROMEDRIVER)
               if not path.exists()]
    if importlib.util.find_spec("selenium") is None:
        missing.append("selenium (pip install -e '.[test]')")
    runtime = Path(__file__).resolve().parent / "node_modules" / "onnxruntime-web" / "dist" / "ort.wasm.min.mjs"
    if not runtime.is_file():
        missing.append("onnxruntime-web (npm ci --prefix edge_demo/web)")
    return missing


def start_chromium(profile_dir: Path, width: int = 1200, height: int = 760):
    """A headless Chromium with a fresh profile in ``profile_dir``; call .quit() when done."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={profile_dir}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
