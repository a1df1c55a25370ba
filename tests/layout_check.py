"""Static layout check of the project's packages (docs/design.md "Layout"), also runnable as a report:

    python tests/layout_check.py        # prints module count, cycles, longest file/function, bad imports

Every import is counted: module level, inside functions (lazy imports dodge a cycle at import time but
it is still one) and `importlib.import_module("literal")`. An import counts as an edge to the most specific
project module it names (`from a.b import c` -> `a.b.c` when that is a module, else `a.b`).
"""
from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "poster_model", "tune_spaces")   # the import graph
SIZED = PACKAGES + ("bench",)                            # the file-length limit
MAX_LINES = 400


@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    is_cli: bool                       # a `__main__` module or one with an `if __name__ == "__main__"` guard
    imports: set[str] = field(default_factory=set)   # project modules only, resolved


def _module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    return ".".join(parts), is_package


def _has_main_guard(tree: ast.Module) -> bool:
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare):
            names = {getattr(n, "id", None) for n in ast.walk(node.test)} | {
                getattr(n, "value", None) for n in ast.walk(node.test)}
            if "__name__" in names and "__main__" in names:
                return True
    return False


def _raw_imports(tree: ast.Module, name: str, is_package: bool) -> set[str]:
    """Dotted names this module asks for; `from x import y` gives x.y (y may be a module or a name)."""
    base = name.split(".") if is_package else name.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[:len(base) - node.level + 1]
                mod = ".".join(anchor + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.update(f"{mod}.{alias.name}" for alias in node.names)
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            out.add(node.args[0].value)
    return out


def load_modules() -> dict[str, Module]:
    modules: dict[str, Module] = {}
    trees: dict[str, ast.Module] = {}
    for pkg in SIZED:
        for path in sorted((REPO / pkg).rglob("*.py")):
            name, is_package = _module_name(path)
            tree = ast.parse(path.read_text(), str(path))
            trees[name] = tree
            is_cli = name.endswith(".__main__") or _has_main_guard(tree)
            modules[name] = Module(name, path, is_package, is_cli)
    for name, mod in modules.items():
        for raw in _raw_imports(trees[name], name, mod.is_package):
            parts = raw.split(".")
            for i in range(len(parts), 0, -1):          # the most specific module named
                target = ".".join(parts[:i])
                if target in modules:
                    if target != name:
                        mod.imports.add(target)
                    break
    return modules


def graph(modules: dict[str, Module]) -> dict[str, set[str]]:
    return {n: {t for t in m.imports if t.split(".")[0] in PACKAGES}
            for n, m in modules.items() if n.split(".")[0] in PACKAGES}


def cycles(modules: dict[str, Module]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    g = graph(modules)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    sys.setrecursionlimit(10_000)

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def cli_imports(modules: dict[str, Module]) -> list[str]:
    """`importer -> cli` for every import of a `__main__`/guarded module (a package importing its own
    `__main__` counts too). bench/ scripts are all CLIs; only imports between them are flagged."""
    return sorted(f"{n} -> {t}" for n, m in modules.items() for t in m.imports if modules[t].is_cli)


def long_files(modules: dict[str, Module], limit: int = MAX_LINES) -> list[tuple[int, str]]:
    sized = ((len(m.path.read_text().splitlines()), str(m.path.relative_to(REPO))) for m in modules.values())
    return sorted((x for x in sized if x[0] > limit), reverse=True)


def longest(modules: dict[str, Module], top: int = 1) -> dict[str, list[tuple[int, str]]]:
    files = sorted(((len(m.path.read_text().splitlines()), str(m.path.relative_to(REPO)))
                    for m in modules.values()), reverse=True)
    funcs = []
    for m in modules.values():
        for node in ast.walk(ast.parse(m.path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                funcs.append((node.end_lineno - node.lineno + 1,
                              f"{m.path.relative_to(REPO)}:{node.lineno} {node.name}"))
    return {"files": files[:top], "functions": sorted(funcs, reverse=True)[:top]}


def main() -> int:
    modules = load_modules()
    in_graph = graph(modules)
    cyc, bad, big = cycles(modules), cli_imports(modules), long_files(modules)
    top = longest(modules, 5)
    print(f"modules: {len(in_graph)} in {', '.join(PACKAGES)} (+{len(modules) - len(in_graph)} in bench/)")
    print(f"import cycles: {len(cyc)}")
    for c in cyc:
        print("   ", " <-> ".join(c))
    print(f"imports of CLI modules: {len(bad)}")
    for b in bad:
        print("   ", b)
    print(f"files over {MAX_LINES} lines: {len(big)}")
    print("longest files:", ", ".join(f"{p} {n}" for n, p in top["files"]))
    print("longest functions:", ", ".join(f"{p} {n}" for n, p in top["functions"]))
    return 1 if cyc or bad or big else 0


if __name__ == "__main__":
    raise SystemExit(main())
