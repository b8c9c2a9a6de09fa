"""A fingerprint of the library code a rule's script runs, for Snakemake to rerun on a code change.

Snakemake's own code trigger watches the rule's script, a few lines that call into this package,
and only by its file time: an edit to the library left every result as it was, while a checkout
that touched the scripts reran the whole workflow. Each rule passes this fingerprint as a param
instead (the workstation profile turns the file-time trigger off), so a job reruns when the code
it runs changes and not otherwise.

What counts: the functions the script imports, the module-level helpers and constants of their
modules they reach, and every module of the package those import, whole. Comments, docstrings
and layout do not count: the fingerprint hashes the syntax tree without them. A code change that
leaves the numbers as they were still reruns what depends on it; `snakemake --touch` marks such
results current again.
"""

from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path

PACKAGE = "electrode_ml"
PACKAGE_DIR = Path(__file__).resolve().parent

_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def script_code_version(script: Path, package_dir: Path = PACKAGE_DIR) -> str:
    """16 hex digits that change when the code ``script`` runs changes (see the module docstring)."""
    script_tree = _without_docstrings(ast.parse(Path(script).read_text(encoding="utf-8")))
    parts: list[ast.AST] = [script_tree]
    modules: set[str] = set()
    for node in ast.walk(script_tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(f"{PACKAGE}."):
            module = node.module.removeprefix(f"{PACKAGE}.")
            reached, imported = _reached(module, tuple(alias.name for alias in node.names), package_dir)
            parts += reached
            modules |= imported
    digest = hashlib.sha256()
    for part in parts:
        digest.update(ast.dump(part).encode())
    for module in sorted(_closure(modules, package_dir)):
        digest.update(f"\0{module}\0".encode())
        digest.update(ast.dump(_tree(module, package_dir)).encode())
    return digest.hexdigest()[:16]


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


def _reached(module: str, names: tuple[str, ...], package_dir: Path) -> tuple[list[ast.stmt], set[str]]:
    """The top-level statements of ``module`` that ``names`` reach, and the package modules they import.

    A definition or assignment is reached when a reached statement refers to its name; a module
    imported at the top is counted only when a reached statement refers to a name it imports, so
    that steps.py's imports for the train step do not count for the data step.
    """
    tree = _tree(module, package_dir)
    defined: dict[str, ast.stmt] = {}
    imported_from: dict[str, set[str]] = {}
    always: list[ast.stmt] = []
    for node in tree.body:
        if isinstance(node, _DEFINITIONS):
            defined[node.name] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        defined[name.id] = node
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                local = (alias.asname or alias.name).split(".")[0]
                imported_from.setdefault(local, set()).update(_imported_modules(node, package_dir))
        else:
            always.append(node)
    reached: list[ast.stmt] = []
    modules: set[str] = set()
    pending = [*names, *(child.id for node in always for child in ast.walk(node) if isinstance(child, ast.Name))]
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        modules |= imported_from.get(name, set())
        node = defined.get(name)
        if node is not None and node not in reached:
            reached.append(node)
            modules |= _imported_modules(node, package_dir)
            pending += [child.id for child in ast.walk(node) if isinstance(child, ast.Name)]
    order = {id(node): index for index, node in enumerate(tree.body)}
    return sorted([*reached, *always], key=lambda node: order[id(node)]), modules


def _imported_modules(node: ast.AST, package_dir: Path) -> set[str]:
    """The package's modules imported anywhere inside ``node`` (function-level imports included)."""
    found = set()
    for child in ast.walk(node):
        if isinstance(child, ast.ImportFrom) and child.module == PACKAGE:
            found |= {alias.name for alias in child.names}
        elif isinstance(child, ast.ImportFrom) and child.module and child.module.startswith(f"{PACKAGE}."):
            found.add(child.module.removeprefix(f"{PACKAGE}.").split(".")[0])
        elif isinstance(child, ast.Import):
            found |= {alias.name.split(".")[1] for alias in child.names if alias.name.startswith(f"{PACKAGE}.")}
    return {module for module in found if (package_dir / f"{module}.py").is_file()}


def _closure(modules: set[str], package_dir: Path) -> set[str]:
    done: set[str] = set()
    pending = list(modules)
    while pending:
        module = pending.pop()
        if module not in done:
            done.add(module)
            pending += sorted(_imported_modules(_tree(module, package_dir), package_dir) - done)
    return done
