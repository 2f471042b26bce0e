"""The import graph of the aloop package: which module imports which, its floors, and any cycle.

    python scripts/import_graph.py          # one line per floor, then each module's imports

Reads the source with `ast` (nothing is imported), counting every import, lazy ones inside
functions included; a module's own parent packages (which Python loads first anyway) are left
out. A module's floor is 0 when it imports no other aloop module, else one above the highest
floor it imports, so every import points to a lower floor; a cycle has no floor and is printed
as one. Exit status 1 on a cycle, or when a module of LIGHT imports torch, e3nn or mace,
directly or through the modules it imports.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "aloop"
HEAVY = {"torch", "e3nn", "mace"}
LIGHT = ("aloop.arrays", "aloop.files", "aloop.store", "aloop.feature_cache", "aloop.metrics",
         "aloop.report_text", "aloop.report", "aloop.plots", "aloop.committee", "aloop.provenance",
         "aloop.binding", "aloop.rundir", "aloop.acquisition", "aloop.cost", "aloop.forecast")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> tuple[set[str], set[str]]:
    """(aloop modules, outside top-level packages) imported by the file at `path`."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    inside, outside = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            named = [f"{base}.{alias.name}" for alias in node.names]
            # `from pkg import submodule` imports the submodule; `from module import name`, the module
            targets = [t for t in named if t in modules] + ([base] if any(t not in modules for t in named) else [])
        else:
            continue
        for target in targets:
            if target.split(".")[0] != "aloop":
                outside.add(target.split(".")[0])
                continue
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and not name.startswith(target):   # itself, or a package it lives in
                inside.add(target)
    return inside, outside


def main() -> int:
    files = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    graph, outside = {}, {}
    for name, path in files.items():
        graph[name], outside[name] = imports(path, set(files))
    floor: dict[str, int] = {}
    remaining = dict(graph)
    while remaining:
        ready = [m for m, deps in remaining.items() if all(d in floor for d in deps)]
        if not ready:
            print("CYCLE among:", ", ".join(sorted(remaining)))
            return 1
        for m in ready:
            floor[m] = 1 + max((floor[d] for d in graph[m]), default=-1)
            del remaining[m]
    for level in range(max(floor.values()) + 1):
        print(f"floor {level}: {' '.join(sorted(m.removeprefix('aloop.') for m in floor if floor[m] == level))}")
    print()
    for m in sorted(graph, key=lambda m: (floor[m], m)):
        print(f"{m.removeprefix('aloop.'):28} -> {' '.join(sorted(d.removeprefix('aloop.') for d in graph[m])) or '-'}")

    def reach(m, seen):
        for d in graph[m]:
            if d not in seen:
                seen.add(d)
                reach(d, seen)
        return seen

    status = 0
    for m in LIGHT:
        heavy = {h for d in reach(m, {m}) for h in outside[d] & HEAVY}
        if heavy:
            print(f"{m} is meant to be light but imports {', '.join(sorted(heavy))}")
            status = 1
    print(f"\nno cycles; {len(LIGHT)} light modules import none of {', '.join(sorted(HEAVY))}" if status == 0 else "")
    return status


if __name__ == "__main__":
    sys.exit(main())
