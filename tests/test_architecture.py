"""The layer order docs/architecture.md draws holds in the source: bench/imports.py reads every engine import (ast,
function-local ones too) and finds no import of a later layer (it finds one when a module makes it), and the doc
draws the table it prints."""

from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_no_engine_module_imports_a_later_layer_or_the_app(bench):
    imports = bench("imports")
    graph = imports.import_graph()
    assert {"job", "weighting.atwu", "token_views"} <= set(graph)  # it read the engine
    assert "records" in graph["job"] and "methods" in graph["config"]  # and its imports
    assert imports.back_edges(graph) == []


def test_the_doc_draws_the_layers_the_script_prints(bench):
    imports = bench("imports")
    assert imports.layer_table(imports.import_graph()) in (ROOT / "docs" / "architecture.md").read_text()


def test_a_back_edge_is_found_even_inside_a_function(bench, tmp_path):
    imports = bench("imports")
    shutil.copytree(ROOT / "atwu_core", tmp_path / "atwu_core", ignore=shutil.ignore_patterns("__pycache__"))
    files = tmp_path / "atwu_core" / "files.py"
    files.write_text(
        files.read_text() + "\n\ndef later():\n    from atwu_core.job import run_job\n\n    return run_job\n"
    )
    (tmp_path / "atwu_core" / "stray.py").write_text("from app import state\n")
    problems = imports.back_edges(imports.import_graph(tmp_path))
    assert "files (base) imports job (job), a later layer" in problems
    assert "stray imports the app" in problems
    assert any(p.startswith("stray: in no layer") for p in problems)
