"""The engine's import graph, read from the source (ast: every `atwu_core` import, function-local and
type-checking ones too), checked against the layer order docs/architecture.md draws: a module imports only from
its own layer and the ones before it, and the engine never imports the app.

    python bench/imports.py    # prints the layer line, each layer's modules and what they import; exit 1 on a
                               # back-edge or a module no layer holds
"""

from __future__ import annotations

import ast
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "atwu_core"
APP = "app"

# The layer order, first to last; a module (`weighting` stands for the package and everything in it) may import
# from its own layer and the earlier ones only. docs/architecture.md draws this line.
LAYERS: dict[str, tuple[str, ...]] = {
    "base": ("files", "hub", "cancel", "job_error", "distributed", "settings"),
    "data": ("data", "demo_world"),
    "model": ("adapters", "gguf", "models", "generation"),
    "forward": ("forward", "losses"),
    "weighting": ("weighting",),
    "method/config": ("methods", "presets", "config", "rerun"),
    "records/runs": ("records", "metrics_record", "headline", "runs", "writer_thread"),
    "metrics": ("metrics", "facts"),
    "evaluation": ("evaluation",),
    "job": (
        "job_setup",
        "optimiser",
        "readout",
        "recorder",
        "job_end",
        "job",
        "console",
        "worker",
        "recompute",
        "finetune",
        "demo_smollm2",
    ),
    "views": ("token_views", "fact_views", "token_csv", "progress", "run_table", "asking"),
    "cli": ("cli",),
}


def module_name(path: Path, root: Path = ROOT) -> str:
    """`atwu_core/weighting/atwu.py` -> `weighting.atwu`; a package's `__init__.py` is the package."""
    parts = path.relative_to(root / PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(tree: ast.AST, modules: set[str]) -> set[str]:
    """The engine modules (and `app`) a parsed file imports anywhere in it; `from atwu_core import x` names the
    module x when x is one."""
    out = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        for name in names:
            if name == APP or name.startswith(APP + "."):
                out.add(APP)
            elif name.startswith(PACKAGE + "."):
                inner = name.removeprefix(PACKAGE + ".")
                if inner in modules:
                    out.add(inner)
                elif inner.rpartition(".")[0] in modules and isinstance(node, ast.ImportFrom):
                    out.add(inner.rpartition(".")[0])  # `from atwu_core.x import name`: the module x
    return out


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Engine module -> the engine modules (and `app`) it imports, itself left out."""
    paths = {module_name(p, root): p for p in sorted((root / PACKAGE).rglob("*.py"))}
    paths.pop("", None)  # atwu_core/__init__.py
    modules = set(paths)
    return {m: imported(ast.parse(p.read_text(), str(p)), modules) - {m} for m, p in paths.items()}


def layer_of(module: str) -> str | None:
    top = module.split(".")[0]
    return next((layer for layer, members in LAYERS.items() if top in members), None)


def back_edges(graph: dict[str, set[str]]) -> list[str]:
    """Every import that points to a later layer (or to the app), and every module no layer holds."""
    order = list(LAYERS)
    problems = [f"{m}: in no layer (add it to bench/imports.py LAYERS and the doc)" for m in graph if not layer_of(m)]
    for m, deps in sorted(graph.items()):
        for d in sorted(deps):
            if d == APP:
                problems.append(f"{m} imports the app")
            elif layer_of(m) and layer_of(d) and order.index(layer_of(d)) > order.index(layer_of(m)):
                problems.append(f"{m} ({layer_of(m)}) imports {d} ({layer_of(d)}), a later layer")
    return problems


def layer_line() -> str:
    return " ─ ".join([*LAYERS, APP])


def _members(graph: dict[str, set[str]], layer: str) -> str:
    """A layer's modules, a package's as `package/ (its modules)`."""

    def shown(top: str) -> str:
        inner = sorted(m.partition(".")[2] for m in graph if m.startswith(top + "."))
        return f"{top}/ ({', '.join(inner)})" if inner else top

    return ", ".join(shown(top) for top in sorted({m.split(".")[0] for m in graph if layer_of(m) == layer}))


def layer_table(graph: dict[str, set[str]]) -> str:
    """The layer line and each layer's modules, as docs/architecture.md draws them."""
    rows = [textwrap.fill(_members(graph, layer), 116, initial_indent=f"{layer:15}", subsequent_indent=" " * 15)
            for layer in LAYERS]  # fmt: skip
    return "\n".join([layer_line(), "", *rows])


def report(graph: dict[str, set[str]]) -> str:
    """The layer table, the earlier layers each layer imports, and the back-edges."""
    lines = [layer_table(graph), "", "what each layer imports:"]
    for layer in LAYERS:
        uses = {layer_of(d) for m in graph if layer_of(m) == layer for d in graph[m]} - {None, layer}
        lines.append(f"{layer:15}{', '.join(sorted(uses, key=list(LAYERS).index)) or '(nothing of the engine)'}")
    problems = back_edges(graph)
    lines += ["", "back-edges: " + ("none" if not problems else ""), *(f"  {p}" for p in problems)]
    return "\n".join(lines)


def main() -> int:
    graph = import_graph()
    print(report(graph))
    return 1 if back_edges(graph) else 0


if __name__ == "__main__":
    sys.exit(main())
