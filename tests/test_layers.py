"""The import graph follows the layers of the step: a lower layer never imports a higher one.

problem/layout <- formulations, controllers, prox, regularization <- duals, primal,
distributed <- solver <- runner, checkpoint <- cli. Every ``import`` statement of
``src/constrain`` is checked, including those inside functions (``if TYPE_CHECKING``
blocks, which never run, are exempt), and ``from constrain import X`` or ``import constrain``
counts as importing the top package (the highest layer) unless ``X`` is a submodule.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "constrain"

# Lower numbers are lower layers; a module may import its own layer or lower ones.
LAYERS: dict[str, int] = {
    "_errors": 0, "_io": 0, "_registry": 0, "_components": 0, "_validation": 0,
    "reference": 0, "_resume": 0, "_state_schema": 0, "_timing": 0, "_patterns": 0,
    "schedules": 0,
    "problem": 1, "variables": 1, "multipliers": 1, "multiplier_models": 1,
    "layout": 2, "blocks": 2, "history": 2,
    "formulations": 3, "controllers": 3, "prox": 3, "regularization": 3, "recording": 3,
    "studies": 3, "loggers": 3,
    "duals": 4, "primal": 4, "distributed": 4, "_cgd": 4,
    "_checkpoint_state": 5, "_stepping": 5, "_cgd_order": 5, "_step_log": 5, "_dual_schedules": 5,
    "_step_runner": 5, "_arguments": 5,
    "solver": 6,
    "config": 7, "runner": 7, "checkpoint": 7, "plots": 7, "bench": 7, "exact": 7, "validation": 7,
    "_run_folder": 7, "randomized": 7, "comparison": 7, "_show": 7,
    "cli": 8,
    "__init__": 9,
}  # fmt: skip


def _layer_of(module: str) -> int:
    head = module.split(".")[0]
    assert head in LAYERS, f"module constrain.{module} has no layer in tests/test_layers.py"
    return LAYERS[head]


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, imported constrain module)`` for every runtime import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = path.relative_to(SRC).with_suffix("").parts
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in ast.walk(node):
                skipped.add(id(child))
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - node.level])
                parts = [*base, *(node.module.split(".") if node.module else [])]
            elif node.module is not None and node.module.split(".")[0] == "constrain":
                parts = node.module.split(".")[1:]
            else:
                continue
            if parts and node.module:
                names = [".".join(parts)]
            elif parts:  # from .sub import module_or_name
                names = [".".join([*parts, a.name]) for a in node.names]
            else:  # from the package itself: a submodule, or a name of its __init__
                names = [a.name if _is_module(a.name) else "__init__" for a in node.names]
            found += [(node.lineno, n) for n in names if n]
        elif isinstance(node, ast.Import):
            found += [
                (node.lineno, a.name.removeprefix("constrain.") if "." in a.name else "__init__")
                for a in node.names
                if a.name == "constrain" or a.name.startswith("constrain.")
            ]
    return found


def _is_module(name: str) -> bool:
    """Whether ``constrain.<name>`` is a module or subpackage (not a name of ``__init__``)."""
    return (SRC / f"{name}.py").is_file() or (SRC / name / "__init__.py").is_file()


MODULES = sorted(p for p in SRC.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(SRC)) for p in MODULES])
def test_no_module_imports_a_higher_layer(path: Path) -> None:
    own = path.relative_to(SRC).with_suffix("").parts
    own_layer = _layer_of(own[0])
    for line, imported in _imports(path):
        if imported.split(".")[0] == own[0]:
            continue  # inside one package
        assert _layer_of(imported) <= own_layer, (
            f"{path.relative_to(SRC)}:{line} imports constrain.{imported} (layer "
            f"{_layer_of(imported)}) from layer {own_layer}; lower layers must not import "
            "higher ones."
        )


def test_every_module_has_a_layer() -> None:
    heads = {p.relative_to(SRC).parts[0].removesuffix(".py") for p in MODULES}
    assert heads <= set(LAYERS), sorted(heads - set(LAYERS))


SOLVER_CLASS_LINES = 350


def test_the_solver_class_stays_small() -> None:
    """``Solver`` keeps the public methods and the loop; the step's sequencing lives in
    ``_step_runner``, argument checks in ``_arguments``, the state format in
    ``_checkpoint_state``. A class that grows past the limit is taking a job back."""
    tree = ast.parse((SRC / "solver.py").read_text(encoding="utf-8"))
    (solver,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Solver"]
    assert solver.end_lineno is not None
    lines = solver.end_lineno - solver.lineno + 1
    assert lines < SOLVER_CLASS_LINES, (
        f"class Solver is {lines} lines (limit {SOLVER_CLASS_LINES}); move a responsibility "
        "into its own module instead of growing it."
    )


@pytest.mark.parametrize(
    ("old", "name", "new"),
    [
        ("constrain.multipliers", "ConstraintLayout", "constrain.layout"),
        ("constrain.multipliers", "IndexedViolation", "constrain.layout"),
        ("constrain.multipliers", "StackedConstraints", "constrain.layout"),
        ("constrain.validation", "validate", "constrain.exact"),
        ("constrain.validation", "validate_registered", "constrain.exact"),
        ("constrain.validation", "KKTResiduals", "constrain.exact"),
        ("constrain.validation", "CONVENTIONS", "constrain.exact"),
        ("constrain._validation", "build_component", "constrain._components"),
        ("constrain.distributed", "shard_setup", "constrain.runner"),
    ],
)
def test_old_module_paths_still_work_for_one_release(old: str, name: str, new: str) -> None:
    import importlib
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        moved = getattr(importlib.import_module(old), name)
    assert moved is getattr(importlib.import_module(new), name)
