"""The import rule of docs/architecture.md: a layer imports only the layers below it (and itself).

Every import in every module of ``src/sbridge`` counts, those inside functions too: a deferred import is still a
dependency. The test fails on the first module that reaches up, naming both ends.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "sbridge"
#: Bottom to top, as in docs/architecture.md.
LAYERS = ("core", "numerics", "processes", "data", "metrics", "nets", "losses", "training", "solvers", "runs")
#: Modules at the top of the package: the public namespace and the command line, which may import anything.
TOP = ("__init__", "__main__", "cli")


def _layer(module: str) -> str:
    """The layer of a dotted module name inside sbridge (``sbridge.core.io`` -> ``core``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every sbridge import in the file."""
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    package = list(rel.parts if rel.name == "__init__" else rel.parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "sbridge"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] != "sbridge":
                continue
            if module == "sbridge":  # `from sbridge import x`: x is a subpackage or a name of the top namespace
                found += [(node.lineno, f"sbridge.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, module))
    return found


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_the_tree_has_only_layers_and_a_few_top_modules():
    top = sorted(p.stem for p in PACKAGE.glob("*.py"))
    packages = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file())
    assert top == sorted(TOP)
    assert packages == sorted(LAYERS)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_a_higher_layer(path):
    own = _layer(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts))
    if own in TOP:
        return
    for line, module in _imports(path):
        target = _layer(module)
        assert target in LAYERS, f"{path.relative_to(PACKAGE)}:{line} imports {module} from the top namespace"
        assert LAYERS.index(target) <= LAYERS.index(own), (
            f"{path.relative_to(PACKAGE)}:{line} ({own}) imports {module} ({target}), a higher layer")


def test_the_rule_catches_an_upward_import(tmp_path):
    """The checker itself: an upward import in a module is reported (so a green run means something)."""
    probe = PACKAGE / "core" / "_layer_probe.py"
    probe.write_text("def f():\n    from sbridge.solvers.base import Solver\n    return Solver\n")
    try:
        with pytest.raises(AssertionError, match="a higher layer"):
            test_no_module_imports_a_higher_layer(probe)
    finally:
        probe.unlink()
