"""The package's architecture as a test: imports point down the layers only, no cycles, no module over ~500 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "emovec"

# Bottom to top. Core modules are ordered among themselves too, so the core has no cycle either.
CORE = ["_version", "storage", "plotting", "provenance", "attention", "embedded", "models", "concepts", "topics", "activations", "vectors",
        "generation", "readout", "steering", "control_vectors", "corpus", "content_check", "recognition", "vllm_engine",
        "rundir", "distributed", "pipeline"]
LAYERS = ["validate", "live", "experiments", "report", "cli", "__init__"]


def _rank(module: str) -> tuple[int, int]:
    """(layer, position): core modules by their order, sub-packages and the top modules by LAYERS."""
    parts = module.split(".")
    if parts[0] in LAYERS:
        return (1 + LAYERS.index(parts[0]), 0)
    if parts[0] in CORE:
        return (0, CORE.index(parts[0]))
    raise AssertionError(f"emovec/{module.replace('.', '/')} is in no layer: add it to CORE or LAYERS in this test")


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(module: str, path: Path) -> list[tuple[str, int, bool]]:
    """(imported emovec module, line, at module level?) for every intra-package import."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    here = module.split(".") if is_pkg else module.split(".")[:-1]
    top_level = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)] if node.level > 1 else here
                target = ".".join([*base, node.module] if node.module else base)
                names = [target] if node.module else [f"{target}.{a.name}".strip(".") for a in node.names]
            elif node.module and node.module.split(".")[0] == "emovec":
                names = [node.module.split(".", 1)[1]] if "." in node.module else [a.name for a in node.names]
            else:
                continue
            out += [(n.strip("."), node.lineno, id(node) in top_level) for n in names if n.strip(".")]
    return out


def test_imports_point_down_only():
    modules = _modules()
    bad = []
    for module, path in modules.items():
        if module == "__init__":
            continue
        mine = _rank(module)
        for target, line, _ in _imports(module, path):
            if target not in modules and target.rsplit(".", 1)[0] in modules:
                target = target.rsplit(".", 1)[0]  # `from . import name` of a function, not a module
            if target not in modules or target == module:
                continue
            theirs = _rank(target)
            same_package = module.split(".")[0] == target.split(".")[0] and mine[0] > 0
            if theirs > mine and not same_package:
                bad.append(f"emovec/{path.relative_to(PACKAGE)}:{line} imports {target} (a layer above)")
    assert not bad, "\n".join(bad)


def test_no_import_cycles_inside_layers():
    modules = _modules()
    graph = {m: {t for t, _, _ in _imports(m, p) if t in modules and t != m} for m, p in modules.items()}
    graph.pop("__init__", None)
    for deps in graph.values():
        deps.discard("__init__")
    seen: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        seen[node] = 1
        for nxt in graph.get(node, ()):
            if seen.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in seen:
                visit(nxt, stack + [nxt])
        seen[node] = 2

    for m in graph:
        if m not in seen:
            visit(m, [m])


def test_no_function_local_imports_of_emovec_modules():
    local = []
    for module, path in _modules().items():
        local += [f"emovec/{path.relative_to(PACKAGE)}:{line} imports {t} inside a function"
                  for t, line, top in _imports(module, path) if not top]
    assert not local, "\n".join(local)


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_stay_small(path):
    n = len(path.read_text(encoding="utf-8").splitlines())
    assert n <= 520, f"{path.relative_to(PACKAGE)} has {n} lines; split it by what it holds"


def test_old_public_names_still_import_from_the_package():
    import emovec

    for name in emovec.__all__:
        assert hasattr(emovec, name), name
