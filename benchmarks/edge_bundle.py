"""Ship a finished run and measure its bundle: file sizes, the Python edge app's latency (onnxruntime
only) and the browser page's in-browser latency (onnxruntime-web, WebAssembly, headless Chromium).

    compress pipeline --out runs/default          # once, if the run does not exist yet
    python benchmarks/edge_bundle.py --run runs/default

Writes benchmarks/results/edge_bundle.{json,md} and a screenshot of the page, edge_web.png. Every
app is also checked while it is measured: its self-test on the bundle's known samples, and a known
test image (not one of the samples) predicted in the browser exactly as onnxruntime predicts it in Python.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from compress.data import DataConfig, load_dataset  # noqa: E402
from compress.fsutil import write_json, write_text  # noqa: E402
from compress.report import markdown_table  # noqa: E402
from compress.ship import BundleConfig, preprocess_image, ship, to_unit_range  # noqa: E402

APP = ROOT / "edge_demo" / "python" / "classify.py"
WEB = ROOT / "edge_demo" / "web"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"edge_web_{name}", WEB / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bundle_sizes(folder: Path, info: dict) -> dict:
    files = info["files"]
    samples = sum(r["bytes"] for name, r in files.items() if name.startswith("samples/"))
    sizes = {name: files[name]["bytes"] for name in info["models"].values()}
    sizes["model.json"] = (folder / "model.json").stat().st_size
    sizes["samples"] = samples
    sizes["total"] = sum(r["bytes"] for r in files.values()) + sizes["model.json"]
    return sizes


def python_app(folder: Path, model_format: str, runs: int) -> dict:
    """The app as a user runs it: one process per call, timed from outside as well as inside."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(APP), str(folder), "--self-test", "--bench", str(runs), "--json",
                           "--format", model_format], capture_output=True, text=True, check=True)
    wall = time.perf_counter() - started
    report = json.loads(done.stdout)
    folder_run = subprocess.run([sys.executable, str(APP), str(folder), str(folder / "samples"), "--json",
                                 "--format", model_format], capture_output=True, text=True, check=True)
    images = json.loads(folder_run.stdout)["latency"]
    return {"format": model_format, "session_load_ms": report["session_load_ms"], "bench": report["bench"],
            "self_test": {k: report["self_test"][k] for k in ("correct", "total")},
            "process_wall_s": wall, "per_image": images}


def known_test_image(info: dict, run_data: dict, path: Path) -> tuple[Path, str]:
    """A test-split image that is not one of the bundle's samples, saved as a PNG to upload."""
    from PIL import Image

    test = load_dataset(DataConfig(**run_data)).test
    spec = {**info["input"], **info["preprocessing"]}
    used = {s["test_index"] for s in info["samples"]}
    index = next(i for i in range(len(test)) if i not in used)
    pixels = np.clip(np.rint(to_unit_range(test.x[index:index + 1], spec) * 255), 0, 255).astype(np.uint8)
    Image.fromarray(pixels[0, 0], mode="L").save(path)
    return path, info["classes"][int(test.y[index])]


def browser_app(folder: Path, info: dict, run_data: dict, runs: int, screenshot: Path, work: Path) -> dict:
    headless = _load("headless")
    missing = headless.missing_tools()
    if missing:
        return {"skipped": "needs " + "; ".join(missing)}
    import onnxruntime as ort
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    serve = _load("serve")
    server, url = serve.serve_in_thread({"bundle": folder})
    driver = headless.start_chromium(work / "chromium-profile")
    spec = {**info["input"], **info["preprocessing"], "background": info["drawing"]["background"]}
    image, label = known_test_image(info, run_data, work / "known.png")
    results = {}
    try:
        for model_format in ("onnx", "ort"):  # the .ort last: its page is the one in the screenshot
            started = time.perf_counter()
            driver.get(f"{url}?model={model_format}&bench={runs}")
            WebDriverWait(driver, 300).until(
                lambda d: d.find_element(By.ID, "status").get_attribute("data-state") != "loading")
            ready_s = time.perf_counter() - started
            state = driver.execute_script("return window.edgeDemo")
            if not state["ready"]:
                raise SystemExit(f"the page failed: {state['error']}")
            driver.find_element(By.ID, "file").send_keys(str(image))
            WebDriverWait(driver, 30).until(
                lambda d: d.find_element(By.ID, "prediction").get_attribute("data-source") == "upload:known.png")
            upload = driver.execute_script("return window.edgeDemo.lastResult")
            session = ort.InferenceSession(str(folder / info["models"][model_format]), providers=["CPUExecutionProvider"])
            logits = session.run(None, {info["input"]["name"]: preprocess_image(image, spec)})[0][0]
            python_label = info["classes"][int(np.argmax(logits))]
            pad = driver.find_element(By.ID, "pad")
            ActionChains(driver).move_to_element_with_offset(pad, -50, -90).click_and_hold().move_by_offset(90, 0) \
                .move_by_offset(-40, 90).move_by_offset(-25, 90).release().perform()  # a 7
            WebDriverWait(driver, 30).until(
                lambda d: d.find_element(By.ID, "prediction").get_attribute("data-source") == "drawing")
            drawn = driver.execute_script("return window.edgeDemo.lastResult")
            results[model_format] = {
                "bench": state["bench"], "self_test": state["selfTest"], "page_ready_s": ready_s,
                "known_image": {"label": label, "browser": upload["label"], "python": python_label,
                                "max_abs_logit_diff": float(np.abs(np.asarray(upload["logits"]) - logits).max())},
                "drawn_seven": {"label": drawn["label"], "probability": max(drawn["probabilities"])},
            }
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        if not driver.save_screenshot(str(screenshot)):
            raise SystemExit(f"could not write the screenshot {screenshot}")
        versions = driver.capabilities.get("browserVersion")
        ort_web = driver.execute_script("return document.querySelector('#footer').textContent")
    finally:
        driver.quit()
        server.shutdown()
    return {"browser": f"Chromium {versions} (headless)", "page_footer": ort_web, "formats": results,
            "screenshot": rel(screenshot)}


def rel(path: Path) -> str:
    """A path as the results show it: relative to the repository when inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def markdown(doc: dict) -> str:
    sizes, run = doc["sizes"], doc["run_result"]
    lines = [f"# Edge bundle of `{doc['run']}`", "",
             f"Made by `{doc['command']}` on {doc['machine']['cpu']} ({doc['machine']['cores']} cores), "
             f"onnxruntime {doc['machine']['onnxruntime']}, Python {doc['machine']['python']}.", "",
             f"Bundled artifact: **{doc['artifact']}** ({'the pipeline' + chr(39) + 's choice' if doc['chosen_by_pipeline'] else 'requested'}), "
             f"test accuracy {100 * run['accuracy']:.2f}% on {doc['verification']['test_samples']} test images; "
             f".ort and .onnx agree on all of them (max |logit diff| {doc['verification']['ort_onnx_max_abs_diff']:.2g}). "
             f"`compress ship` took {doc['ship_wall_s']:.1f} s.", "", "## Bundle files", ""]
    rows = [[name, f"{size:,}", f"{size / 1024:.1f}"] for name, size in sizes.items()]
    rows.append(["(teacher ONNX, for scale)", f"{doc['teacher_size_bytes']:,}", f"{doc['teacher_size_bytes'] / 1024:.1f}"])
    lines += [markdown_table(["file", "bytes", "KiB"], rows), "## Python edge app (onnxruntime, numpy, Pillow)", ""]
    rows = []
    for entry in doc["python_app"]:
        b = entry["bench"]
        rows.append([f"model.{entry['format']}", f"{b['p50_ms']:.3f}", f"{b['p90_ms']:.3f}", f"{b['p99_ms']:.3f}",
                     f"{b['mean_ms']:.3f}", str(b["runs"]), f"{entry['session_load_ms']:.1f}",
                     f"{entry['per_image']['preprocess']['mean_ms']:.3f}", f"{entry['process_wall_s']:.2f}",
                     f"{entry['self_test']['correct']}/{entry['self_test']['total']}"])
    lines += [markdown_table(["model", "p50 ms", "p90 ms", "p99 ms", "mean ms", "runs", "session load ms",
                              "preprocess ms/image", "whole process s", "self-test"], rows),
              f"Batch 1, {doc['threads']} intra-op thread, after {doc['python_app'][0]['bench']['warmup_runs']} warm-up runs; "
              "\"whole process\" is one `classify.py --self-test --bench` call from start to exit (interpreter start, "
              f"imports, sha256 checks, session, self-test, {doc['python_app'][0]['bench']['runs']} timed runs). "
              f"The pipeline's own benchmark measured p50 {run['p50_ms']:.3f} ms for this artifact.", ""]
    browser = doc["browser_app"]
    lines += ["## Browser page (onnxruntime-web, WebAssembly)", ""]
    if "skipped" in browser:
        lines += [f"Not measured: {browser['skipped']}.", ""]
    else:
        rows = []
        for fmt, entry in browser["formats"].items():
            b, k = entry["bench"], entry["known_image"]
            rows.append([f"model.{fmt}", f"{b['p50_ms']:.3f}", f"{b['p90_ms']:.3f}", f"{b['p99_ms']:.3f}",
                         f"{b['mean_ms']:.3f}", str(b["runs"]), f"{entry['page_ready_s']:.2f}",
                         f"{entry['self_test']['correct']}/{entry['self_test']['total']}",
                         f"{k['browser']} / {k['python']} (label {k['label']})", f"{k['max_abs_logit_diff']:.2g}",
                         f"{entry['drawn_seven']['label']} ({100 * entry['drawn_seven']['probability']:.0f}%)"])
        lines += [markdown_table(["model", "p50 ms", "p90 ms", "p99 ms", "mean ms", "runs", "page ready s", "self-test",
                                  "known image: browser / Python", "max logit diff", "drawn 7"], rows),
                  f"{browser['browser']}; {browser['page_footer']}. \"page ready\" counts loading the page, "
                  "onnxruntime-web, the sha256 checks of every bundle file, the self-test and the timed runs.", "",
                  f"![the page after drawing a 7]({Path(browser['screenshot']).name})", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "default", help="finished run folder")
    parser.add_argument("--bundle", type=Path, default=None, help="bundle folder to (re)write (default RUN/bundle)")
    parser.add_argument("--runs", type=int, default=2000, help="timed inferences per app and format")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "edge_bundle")
    args = parser.parse_args()
    folder = args.bundle or args.run / "bundle"
    work = ROOT / "benchmarks" / "_work" / "edge_bundle"
    work.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    info = ship(BundleConfig(), args.run, folder, force=True)
    ship_wall = time.perf_counter() - started
    manifest = json.loads((args.run / "manifest.json").read_text())
    python_results = [python_app(folder, fmt, args.runs) for fmt in ("ort", "onnx")]
    browser = browser_app(folder, info, manifest["config"]["data"], args.runs, args.out.parent / "edge_web.png", work)

    import onnxruntime as ort

    command = "python benchmarks/edge_bundle.py " + shlex.join(sys.argv[1:])
    doc = {"command": command.strip(), "run": rel(args.run), "bundle": rel(folder), "artifact": info["artifact"],
           "chosen_by_pipeline": info["chosen_by_pipeline"], "ship_wall_s": ship_wall,
           "sizes": bundle_sizes(folder, info), "teacher_size_bytes": manifest["results"]["teacher"]["size_bytes"],
           "run_result": manifest["results"][info["artifact"]], "verification": info["verification"], "threads": 1,
           "python_app": python_results, "browser_app": browser,
           "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "os": platform.platform(),
                       "python": platform.python_version(), "onnxruntime": ort.__version__}}
    write_json(args.out.with_suffix(".json"), doc)
    write_text(args.out.with_suffix(".md"), markdown(doc))
    print(markdown(doc))


if __name__ == "__main__":
    main()
