"""The library is plain Python: nothing in pipeline/ imports Prefect or flows/, not even lazily."""

from __future__ import annotations

import ast
import subprocess
import sys

from tests.helpers import ROOT

ORCHESTRATION = ("prefect", "prefect_dask", "flows")


def test_no_module_of_the_library_names_the_orchestration_in_an_import() -> None:
    offenders = []
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.relative_to(ROOT)}:{node.lineno} imports {n}" for n in names if n.split(".")[0] in ORCHESTRATION]
    assert offenders == []


def test_every_library_module_imports_with_prefect_and_flows_blocked() -> None:
    code = f"""
import importlib, pkgutil, sys

class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {ORCHESTRATION!r}:
            raise ImportError("blocked: " + name)
        return None

sys.meta_path.insert(0, Blocked())
import pipeline
modules = [m.name for m in pkgutil.walk_packages(pipeline.__path__, "pipeline.")]
for name in modules:
    importlib.import_module(name)
from pipeline import ingest_source, mine_negatives, write_data_config, train_model, evaluate_model, Embedder
print(len(modules))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) > 40  # every room of the library was imported


def test_importing_the_library_face_is_light() -> None:
    code = "import sys, pipeline; print(sorted(m for m in ('torch', 'polars', 'faiss', 'prefect') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
