"""What the seed benchmarks share (benchmarks/pipeline_seeds.py, benchmarks/text_default.py): their command line
and the loop that runs the pipeline once per seed."""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from compress.config import load_config
from compress.pipeline import run_pipeline

ROOT = Path(__file__).resolve().parent.parent


def seed_parser(description: str, name: str, default_seeds: list[int]) -> argparse.ArgumentParser:
    """--seeds, --work (benchmarks/_work/NAME: one run folder per seed), --out (benchmarks/results/NAME) and --set."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seeds", type=int, nargs="+", default=default_seeds)
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "_work" / name)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / name)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra config override")
    return parser


def seed_runs(seeds: list[int], work: Path, overrides: Callable[[int], list[str]]) -> Iterator[tuple[int, dict, float]]:
    """The pipeline with ``overrides(seed)`` into work/seed<N>, replacing what is there, one seed after another:
    (seed, manifest, wall seconds) for each."""
    for seed in seeds:
        started = time.perf_counter()
        manifest = run_pipeline(load_config(None, overrides(seed)), work / f"seed{seed}", force=True)
        yield seed, manifest, time.perf_counter() - started
