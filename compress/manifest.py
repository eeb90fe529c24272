"""The run manifest: what each stage was given, what it made (with sha256), how long it took, and
the measured results per artifact. A manifest is enough to replay a run (its resolved config)."""
from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from compress.errors import CompressError
from compress.fsutil import sha256, write_json

MANIFEST_VERSION = 2  # 2: checkpoints are spec + safetensors; fingerprints cover the data content
TRACKED_PACKAGES = ("compress", "torch", "onnx", "onnxruntime", "numpy", "torch-pruning", "scikit-learn", "mlxtend")


@dataclass
class StageResult:
    """What a stage hands back: named output files and its measured metrics."""

    outputs: dict[str, Path]
    metrics: dict = field(default_factory=dict)


def compress_version() -> str:
    try:
        return metadata.version("compress")
    except metadata.PackageNotFoundError:
        return "unknown"


def package_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def file_record(path: Path, root: Path) -> dict:
    path = Path(path)
    try:
        shown = str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        shown = str(path)
    return {"path": shown, "sha256": sha256(path), "bytes": path.stat().st_size}


def new_manifest(config: dict) -> dict:
    return {"manifest_version": MANIFEST_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "status": "running", "config": config, "packages": package_versions(), "stages": {}, "results": {}}


def load_manifest(run_dir: Path) -> dict | None:
    path = Path(run_dir) / "manifest.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CompressError(f"{path} is not valid JSON ({exc}): remove the run folder or pick another --out") from exc


def save_manifest(run_dir: Path, manifest: dict) -> None:
    write_json(Path(run_dir) / "manifest.json", manifest)


def manifest_problem(manifest: object, finished: bool = False) -> str | None:
    """What is wrong with the shape of a manifest read from disk (None when it is usable): ``--resume`` and
    ``ship`` read fields from it, and a hand-edited or foreign file must not surface as a KeyError."""
    if not isinstance(manifest, dict):
        return f"holds a {type(manifest).__name__}, not a manifest (a JSON object)"
    stages = manifest.get("stages", {})
    if not isinstance(stages, dict):
        return "has 'stages' that is not an object"
    for name, record in stages.items():
        if not isinstance(record, dict):
            return f"has a stage {name!r} that is not an object"
        outputs = record.get("outputs", {})
        if not isinstance(outputs, dict) or not all(
                isinstance(o, dict) and isinstance(o.get("path"), str) and isinstance(o.get("sha256"), str)
                for o in outputs.values()):
            return f"has stage {name!r} outputs without a path and sha256 each"
        if not isinstance(record.get("files", []), list) or not isinstance(record.get("fingerprint", ""), str):
            return f"has a stage {name!r} whose files or fingerprint are malformed"
    if not finished:
        return None
    if not isinstance(manifest.get("config"), dict) or not isinstance(manifest["config"].get("data"), dict):
        return "has no config with a data section"
    results = manifest.get("results")
    if not isinstance(results, dict) or not all(isinstance(r, dict) and isinstance(r.get("accuracy"), (int, float))
                                                for r in results.values()):
        return "has 'results' that are not one object with an accuracy per artifact"
    ship = manifest.get("ship")
    if not isinstance(ship, dict) or not isinstance(ship.get("artifact"), str) or ship["artifact"] not in results:
        return "has no 'ship' choice naming one of its results"
    return None
