"""The package's floors: each module imports only from its own floor and the floors below it, read from the source
(every import, those inside functions included), so that an upward import fails here before it can become a cycle.

    cli -> training -> bench -> inference -> weights -> io -> errors, model, processes

``drcn_cli/__init__.py`` (the public API, importing lazily) and ``__main__.py`` stand above the floors; any module may
take the version from the package itself.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "drcn_cli"
BOTTOM = {"errors", "model", "processes"}
# What each floor may import from the package, besides the package's version.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "model": set(),
    "processes": {"errors"},
    "io": {"io", "errors", "processes"},
    "weights": {"weights", "io", *BOTTOM},
    "inference": {"inference", "weights", "io", *BOTTOM},
    "bench": {"bench", "inference", "weights", "io", *BOTTOM},
    "training": {"training", "bench", "inference", "weights", "io", *BOTTOM},
    "cli": {"cli", "training", "bench", "inference", "weights", "io", *BOTTOM},
}
FLOORS = ("io", "weights", "inference", "bench", "training")  # the subpackages besides cli/ (the Typer app)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    relative = Path(*name.split("."))
    return (PACKAGE.parent / relative).with_suffix(".py").is_file() or (PACKAGE.parent / relative).is_dir()


def package_imports(path: Path) -> list[tuple[int, str, tuple[str, ...]]]:
    """(line, module, names taken from it) of every import of a drcn_cli module in the file, at any depth."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, ()) for alias in node.names if alias.name.split(".")[0] == "drcn_cli"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target.split(".")[0] != "drcn_cli":
                continue
            names = tuple(alias.name for alias in node.names)
            submodules = [f"{target}.{n}" for n in names if is_module(f"{target}.{n}")]
            if submodules:  # `from . import hub, table`: each a module of its own
                found += [(node.lineno, module, ()) for module in submodules]
            else:
                found.append((node.lineno, target, names))
    return found


def floor(module: str) -> str | None:
    """The floor of a drcn_cli module: its subpackage, or its own name for the bottom modules; None for the package
    itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)
FLOORED = [p for p in MODULES if p.relative_to(PACKAGE).as_posix() not in ("__init__.py", "__main__.py")]


def test_every_module_has_a_floor():
    assert {floor(module_name(p)) for p in FLOORED} == set(ALLOWED)


@pytest.mark.parametrize("path", FLOORED, ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_a_module_imports_only_its_own_floor_and_those_below(path):
    own = floor(module_name(path))
    assert own is not None
    wrong = []
    for line, target, names in package_imports(path):
        if target == "drcn_cli":  # the package itself: only its version
            if set(names) - {"__version__"}:
                wrong.append(f"line {line}: {', '.join(names)} from drcn_cli")
        elif floor(target) not in ALLOWED[own]:
            wrong.append(f"line {line}: {target}")
    assert not wrong, f"{module_name(path)} ({own}) imports above its floor: {'; '.join(wrong)}"


def test_the_model_imports_only_torch_and_the_standard_library():
    tree = ast.parse((PACKAGE / "model.py").read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add("." if node.level else (node.module or "").split(".")[0])
    assert imported <= {"torch", "__future__"} | set(sys.stdlib_module_names), imported


@pytest.mark.parametrize("name", FLOORS)
def test_a_floors_init_is_its_description_alone(name):
    """No re-exports and no imports: callers import from the module that defines a name, and importing a floor
    costs nothing."""
    tree = ast.parse((PACKAGE / name / "__init__.py").read_text(encoding="utf-8"))
    assert len(tree.body) == 1 and isinstance(tree.body[0], ast.Expr) and ast.get_docstring(tree)


def test_no_import_cycles():
    # The package itself is left out: it imports nothing at its top, so taking its version closes no cycle.
    graph = {
        module_name(p): {t for _, t, _ in package_imports(p) if t not in (module_name(p), "drcn_cli")}
        for p in MODULES
        if module_name(p) != "drcn_cli"
    }
    done: set[str] = set()

    def visit(module: str, trail: list[str]) -> None:
        if module in trail:
            cycle = trail[trail.index(module):] + [module]
            pytest.fail(f"import cycle: {' -> '.join(cycle)}")
        if module in done:
            return
        for target in sorted(graph.get(module, ())):
            visit(target, [*trail, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
