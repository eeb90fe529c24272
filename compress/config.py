"""The pipeline's configuration: one dataclass per stage, loaded from TOML or YAML, overridden by
``--set section.key=value``, type-checked, and rejecting unknown keys with the list of valid ones."""
from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from compress.data import DataConfig
from compress.errors import CompressError
from compress.search import SearchConfig
from compress.train import TrainConfig  # noqa: F401  (nested in stage configs; kept importable from here)
from compress.zoo import ModelSpec  # noqa: F401
from stages import STAGES

# The stage sections of PipelineConfig, taken from the one stage registry.
TeacherConfig = STAGES["teacher"].config
DistillConfig = STAGES["distill"].config
PruneConfig = STAGES["prune"].config
ExportConfig = STAGES["export"].config
QuantizeConfig = STAGES["quantize"].config
BenchmarkConfig = STAGES["benchmark"].config


@dataclass
class ShipChoiceConfig:
    """How the pipeline picks what to ship."""

    accuracy_budget: float = 1.0  # accuracy points below the teacher an artifact may lose and still ship
    candidates: list[str] = field(default_factory=lambda: ["teacher", "student", "pruned", "int8"])  # artifacts to choose from

    def __post_init__(self) -> None:
        if not self.accuracy_budget >= 0:  # also refuses NaN
            raise ValueError(f"ship.accuracy_budget must be >= 0 points, got {self.accuracy_budget}")
        unknown = set(self.candidates) - {"teacher", "student", "pruned", "int8", "student_baseline"}
        if unknown or not self.candidates:
            raise ValueError(f"ship.candidates must be a non-empty subset of teacher, student, pruned, int8, "
                             f"student_baseline; got {self.candidates}")


@dataclass
class PipelineConfig:
    """Everything ``compress pipeline`` does, one section per stage."""

    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    ship: ShipChoiceConfig = field(default_factory=ShipChoiceConfig)
    search: SearchConfig = field(default_factory=SearchConfig)  # `compress search` only: budgets, space, halving
    threads: int = 2  # PyTorch threads for training

    @classmethod
    def quick(cls) -> "PipelineConfig":
        """A tiny, fast preset for tests and smoke runs: digits, an MLP teacher, one epoch per stage."""
        return load_config(None, [
            "data.source=digits", "teacher.source=train", 'teacher.model.arch="mlp"', "teacher.train.epochs=20",
            'teacher.train.optimizer="adamw"', "teacher.train.lr=0.003", 'distill.student.arch="mlp"',
            "distill.student.width=0.5", "distill.train.epochs=15", 'distill.train.optimizer="adamw"',
            "distill.train.lr=0.003", "prune.finetune.epochs=5", 'prune.finetune.optimizer="adamw"',
            "prune.finetune.lr=0.002", "prune.round_to=1", "prune.amount=0.3", "prune.protect_first=false",
            "quantize.calibration_samples=32", "benchmark.min_runs=20", "benchmark.min_seconds=0.05",
            "benchmark.warmup_runs=5", "benchmark.cold_start=false", "benchmark.profile=false",
            "export.parity_samples=64",
        ])


def load_config(path: str | Path | None, overrides: list[str] = (), base: type = PipelineConfig):
    """Read ``path`` (TOML or YAML; None = defaults), apply ``overrides`` ("a.b=value"), build ``base``."""
    raw = read_config_file(path) if path else {}
    for override in overrides:
        key, value = parse_override(override)
        _assign(raw, key.split("."), value)
    return build(base, raw)


def read_config_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CompressError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CompressError(f"config {path} is not UTF-8 text (byte {exc.start} is {exc.object[exc.start]:#04x}): save it "
                            "as UTF-8") from exc
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            raise CompressError(f"config file {path} must end in .toml, .yaml or .yml")
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        raise CompressError(f"cannot parse config {path}: {exc}") from exc
    except Exception as exc:  # yaml.YAMLError without importing yaml at module level
        if type(exc).__module__.startswith("yaml"):
            raise CompressError(f"cannot parse config {path}: {str(exc).splitlines()[0]}") from exc
        raise
    if not isinstance(data, dict):
        raise CompressError(f"config {path} must be a mapping of sections, got {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[str, object]:
    """'distill.train.epochs=3' -> ('distill.train.epochs', 3); values are TOML literals, else strings."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise CompressError(f"override {text!r} must look like section.key=value")
    value = value.strip()
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value  # bare words are strings: data.source=digits
    return key.strip(), parsed


def _assign(raw: dict, keys: list[str], value: object) -> None:
    for key in keys[:-1]:
        raw = raw.setdefault(key, {})
        if not isinstance(raw, dict):
            raise CompressError(f"cannot set {'.'.join(keys)}: {key} is a value, not a section")
    raw[keys[-1]] = value


def build(cls: type, raw: dict, prefix: str = "", default=None):
    """Build dataclass ``cls`` from a nested dict, checking keys and types. Keys the dict leaves out
    keep ``default``'s values (a nested section keeps its parent's defaults, e.g. prune.finetune's
    own epochs), or the class defaults when there is no ``default``."""
    if not isinstance(raw, dict):
        raise CompressError(f"{prefix.rstrip('.') or 'config'} must be a section (mapping), got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [key for key in raw if key not in fields]
    if unknown:
        raise CompressError(f"unknown config key {prefix}{unknown[0]}: valid keys of "
                            f"{prefix.rstrip('.') or 'the config'} are {', '.join(fields)}")
    if default is None:
        default = cls()
    values = {}
    for name, value in raw.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = build(hint, value, f"{prefix}{name}.", getattr(default, name))
        else:
            values[name] = _check_type(value, hint, f"{prefix}{name}")
    try:
        return dataclasses.replace(default, **values)
    except (ValueError, CompressError) as exc:
        # Nested sections (teacher.train, distill.train, prune.finetune) share one class: say which one failed.
        where = f" [{prefix.rstrip('.')}]" if prefix else ""
        raise CompressError(f"invalid config{where}: {exc}") from exc


def _check_type(value, hint, key: str):
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union else (hint,)
    for option in allowed:
        if option is type(None) and value is None:
            return None
        if isinstance(value, str) and value.lower() == "none" and type(None) in allowed:
            return None
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise CompressError(f"config key {key} must be a finite number, got {value!r}")
            return float(value)
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option in (bool, str) and type(value) is option:
            return value
        if typing.get_origin(option) is list and isinstance(value, list):
            item_type = typing.get_args(option)[0]
            return [_check_type(item, item_type, f"{key}[]") for item in value]
    names = " or ".join(getattr(t, "__name__", str(t)) for t in allowed)
    raise CompressError(f"config key {key} must be {names}, got {value!r}")


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def to_toml(data: dict, prefix: str = "") -> str:
    """Write a nested config dict as TOML (for `compress config` and replaying a manifest)."""
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
    sections = {k: v for k, v in data.items() if isinstance(v, dict)}
    lines = [f"[{prefix.rstrip('.')}]"] if prefix and scalars else []
    for key, value in scalars.items():
        if value is None:
            lines.append(f"# {key} = (none)")
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    text = "\n".join(lines) + ("\n\n" if lines else "")
    for key, value in sections.items():
        text += to_toml(value, f"{prefix}{key}.")
    return text


def _toml_value(value) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value)


def field_help(cls: type, prefix: str, default=None) -> list[str]:
    """One line per field of ``cls`` (nested sections expanded): the --set key, its default and the
    comment written beside it in the dataclass, so help text cannot drift from the defaults."""
    comments = _field_comments(cls)
    default = cls() if default is None else default
    lines = []
    for f in dataclasses.fields(cls):
        value = getattr(default, f.name)
        if dataclasses.is_dataclass(value):
            lines += field_help(type(value), f"{prefix}{f.name}.", value)
            continue
        shown = _toml_value(value) if value is not None else "(none)"
        lines.append(f"{prefix}{f.name}={shown}  {comments.get(f.name, '')}".rstrip())
    return lines


def _field_comments(cls: type) -> dict[str, str]:
    import inspect
    import re

    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    pattern = re.compile(r"^\s+(\w+):[^#\n]*?#\s*(.+)$")
    return {m.group(1): m.group(2).strip() for line in source.splitlines() if (m := pattern.match(line))}
