"""The layering rules, checked on the source: the core never imports stages, stages never import each
other, and only the application layer (cli, config, pipeline) knows the stages."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
APPLICATION = {"cli.py", "config.py", "pipeline.py"}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


CORE = sorted(p for p in (ROOT / "compress").rglob("*.py") if p.name not in APPLICATION)
STAGE_MODULES = sorted(p for p in (ROOT / "stages").glob("*.py") if p.name != "__init__.py")


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_core_never_imports_stages(path):
    bad = {name for name in imported_modules(path) if name == "stages" or name.startswith("stages.")}
    assert not bad, f"{path.name} imports {sorted(bad)}: move the shared code into compress/"


@pytest.mark.parametrize("path", STAGE_MODULES, ids=lambda p: p.name)
def test_stages_do_not_import_each_other(path):
    bad = {name for name in imported_modules(path) if name == "stages" or name.startswith("stages.")}
    assert not bad, f"stages/{path.name} imports {sorted(bad)}: share code through compress/ instead"


def test_the_registry_lists_every_stage_module():
    from stages import STAGES

    assert sorted(STAGES) == sorted(p.stem for p in STAGE_MODULES)
    for stage in STAGES.values():
        assert stage.run.__module__ == f"stages.{stage.name}"
        assert stage.config.__module__ in (f"stages.{stage.name}", ) or stage.config.__module__.startswith("compress.")


def test_the_layering_check_catches_an_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from stages.distill import DistillConfig\nimport os\n")
    assert "stages.distill" in imported_modules(bad)


def test_one_fingerprint_function():
    """Every stage run is fingerprinted by compress.runner.fingerprint alone."""
    sources = [*CORE, *STAGE_MODULES, *(ROOT / "compress" / n for n in APPLICATION)]
    defining = [p.name for p in sources if "def fingerprint(" in p.read_text() or "def run_key(" in p.read_text()]
    assert defining == ["runner.py"]
