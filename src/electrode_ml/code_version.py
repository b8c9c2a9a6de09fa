"""A fingerprint of the library code a rule's script runs, for Snakemake to rerun on a code change.

Snakemake's own code trigger watches the rule's script, a few lines that call into this package,
and only by its file time: an edit to the library left every result as it was, while a checkout
that touched the scripts reran the whole workflow. Each rule passes this fingerprint as a param
instead (both profiles turn the file-time trigger off), so a job reruns when the code it runs
changes and not otherwise.

What counts: the functions the script imports (or names to ``run_step``, which imports it from
the steps module), the module-level helpers and constants of their modules they reach, and every
module of the package those import, whole. Comments, docstrings
and layout do not count: the fingerprint hashes the syntax tree without them, and comes out the
same under Python 3.11, 3.12 and 3.13 (measured on this package). A code change that
leaves the numbers as they were still reruns what depends on it; `snakemake --touch` marks such
results current again. The Snakefile adds :func:`libraries_version` to it: Python's and the
numerical libraries' versions, whose upgrade may move the numbers as much as a code edit.
"""

from __future__ import annotations

import ast
import hashlib
import json
import platform
from functools import lru_cache
from importlib import metadata
from pathlib import Path

PACKAGE = "electrode_ml"
PACKAGE_DIR = Path(__file__).resolve().parent
# The libraries whose arithmetic or file formats the results carry: upgrading one in `.venv` may
# move a number, so it reruns the jobs as a code edit does. Not Snakemake, tqdm or the MP client:
# a download's outputs stay until deleted (the data rule has no inputs to go stale), and its
# provenance names the mp-api and emmet versions that fetched it.
NUMERICAL_LIBRARIES = ("torch", "numpy", "scipy", "scikit-learn", "pandas", "pyarrow", "pymatgen", "pymatgen-core",
                       "ax-platform", "botorch", "gpytorch", "linear_operator", "matminer", "matplotlib", "joblib")

_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
# Where runner.run_step finds a step given by name.
STEPS_MODULE = "steps"


def script_code_version(script: Path, package_dir: Path = PACKAGE_DIR) -> str:
    """16 hex digits that change when the code ``script`` runs changes (see the module docstring)."""
    script_tree = _without_docstrings(ast.parse(Path(script).read_text(encoding="utf-8")))
    parts: list[ast.AST] = [script_tree]
    modules: set[str] = set()
    for node in ast.walk(script_tree):
        step = _step_by_name(node)
        if step:  # run_step(snakemake, "train_step"): the step is imported inside run_step, once the log is open
            reached, imported = _reached(STEPS_MODULE, (step,), package_dir)
            parts += reached
            modules |= imported
            continue
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        names = tuple(alias.name for alias in node.names)
        module = _package_module(node)
        if module and "*" not in names:
            reached, imported = _reached(module, names, package_dir)
            parts += reached
            modules |= imported
        else:  # `from electrode_ml import steps`, `import electrode_ml.steps`, a star import: whole modules
            modules |= _imported_modules(node, package_dir)
    digest = hashlib.sha256()
    for part in parts:
        digest.update(_source(part).encode())
    for module in sorted(_closure(modules, package_dir)):
        digest.update(f"\0{module}\0".encode())
        digest.update(_source(_tree(module, package_dir)).encode())
    return digest.hexdigest()[:16]


def _step_by_name(node: ast.AST) -> str | None:
    """``name`` for a call ``run_step(..., "name")``: runner.run_step imports that function of the
    steps module itself."""
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "run_step"
            and len(node.args) > 1 and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)):
        return node.args[1].value
    return None


def library_versions() -> dict[str, str]:
    """Python's and each numerical library's installed version, read from the package metadata
    without importing the library, so that parsing the Snakefile stays fast."""
    versions = {"python": platform.python_version()}
    for package in NUMERICAL_LIBRARIES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def libraries_version() -> str:
    """16 hex digits that change when :func:`library_versions` does: added to every rule's ``code``."""
    return hashlib.sha256(json.dumps(library_versions(), sort_keys=True).encode()).hexdigest()[:16]


def _source(node: ast.AST | list | object) -> str:
    """The syntax tree as text: no comments or layout, and the same under Python 3.11-3.13.

    Not ``ast.dump``, which prints fields that 3.12 added (``type_params=[]``) and 3.13 leaves out
    when empty, nor ``ast.unparse``, whose f-strings take other quotes from 3.12 on.
    """
    if isinstance(node, ast.AST):
        fields = (f"{name}={_source(value)}" for name, value in ast.iter_fields(node)
                  if value is not None and value != [])
        return f"{type(node).__name__}({', '.join(fields)})"
    if isinstance(node, list):
        return f"[{', '.join(_source(item) for item in node)}]"
    return repr(node)


@lru_cache(maxsize=None)
def _tree(module: str, package_dir: Path) -> ast.Module:
    return _without_docstrings(ast.parse((package_dir / f"{module}.py").read_text(encoding="utf-8")))


def _without_docstrings(tree: ast.Module) -> ast.Module:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, *_DEFINITIONS)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                node.body = node.body[1:] or [ast.Pass()]
    return tree


def _package_module(node: ast.AST) -> str | None:
    """``x`` for ``from electrode_ml.x import ...`` or ``from .x import ...``, else None."""
    if not isinstance(node, ast.ImportFrom) or not node.module:
        return None
    if node.level == 1:
        return node.module.split(".")[0]
    if node.level == 0 and node.module.startswith(f"{PACKAGE}."):
        return node.module.removeprefix(f"{PACKAGE}.").split(".")[0]
    return None


def _reached(module: str, names: tuple[str, ...], package_dir: Path) -> tuple[list[ast.stmt], set[str]]:
    """The top-level statements of ``module`` that ``names`` reach, and the package modules they import.

    A definition or assignment is reached when a reached statement refers to its name (every
    statement that binds it, if several do); a module imported at the top is counted only when a
    reached statement refers to a name it imports, so that steps.py's imports for the train step
    do not count for the data step. Other top-level statements (an ``if`` or ``try`` block) always
    count, with everything they import.
    """
    tree = _tree(module, package_dir)
    binders: dict[str, list[ast.stmt]] = {}
    imported_from: dict[str, set[str]] = {}
    always: list[ast.stmt] = []
    for node in tree.body:
        if isinstance(node, _DEFINITIONS):
            binders.setdefault(node.name, []).append(node)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:  # `X = ...`, `X["k"] = ...` and `f.cache = ...` all bind to X / f
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        binders.setdefault(name.id, []).append(node)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                local = (alias.asname or alias.name).split(".")[0]
                imported_from.setdefault(local, set()).update(_imported_modules(node, package_dir))
        else:
            always.append(node)
    reached: list[ast.stmt] = []
    modules: set[str] = set().union(*(_imported_modules(node, package_dir) for node in always))
    pending = [*names, *(child.id for node in always for child in ast.walk(node) if isinstance(child, ast.Name))]
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        modules |= imported_from.get(name, set())
        for node in binders.get(name, []):
            if node not in reached:
                reached.append(node)
                modules |= _imported_modules(node, package_dir)
                pending += [child.id for child in ast.walk(node) if isinstance(child, ast.Name)]
    order = {id(node): index for index, node in enumerate(tree.body)}
    return sorted([*reached, *always], key=lambda node: order[id(node)]), modules


def _imported_modules(node: ast.AST, package_dir: Path) -> set[str]:
    """The package's modules imported anywhere inside ``node`` (function-level imports included)."""
    found = set()
    for child in ast.walk(node):
        if isinstance(child, ast.ImportFrom) and (child.module == PACKAGE or (child.level == 1 and not child.module)):
            found |= {alias.name for alias in child.names}  # `from electrode_ml import plots`, `from . import plots`
        elif _package_module(child):
            found.add(_package_module(child))
        elif isinstance(child, ast.Import):
            found |= {alias.name.split(".")[1] for alias in child.names if alias.name.startswith(f"{PACKAGE}.")}
    unknown = {module for module in found if not (package_dir / f"{module}.py").is_file()}
    if unknown - {"__version__"} and any((package_dir / module).is_dir() for module in unknown):
        raise ValueError(f"code_version does not follow subpackages: {sorted(unknown)}")
    return found - unknown


def _closure(modules: set[str], package_dir: Path) -> set[str]:
    done: set[str] = set()
    pending = list(modules)
    while pending:
        module = pending.pop()
        if module not in done:
            done.add(module)
            pending += sorted(_imported_modules(_tree(module, package_dir), package_dir) - done)
    return done
