"""Which code decides a stage's output: the modules it runs, minus docstrings and comments.

A stage names its entry modules; the digest follows their ``facefoundry.*`` imports
(module level and inside functions, found statically, nothing is imported) to every
project module they can reach, and hashes each one's syntax tree with docstrings
removed. So a docstring or comment edit re-runs nothing, an edit of the shard writer
re-runs generation (which writes its chunks with it), and an edit of the report or the
recognizer trainer does not. A package's lazy ``_EXPORTS`` table (name -> submodule,
as in ``shards/__init__.py``) counts as imports of those submodules.
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

ROOT_PACKAGE = "facefoundry"
ROOT_MODULES = ""  # key of the namespace's own folder (facefoundry/atomic.py, roc.py, ...)


def package_roots() -> dict[str, Path]:
    """Folder of each ``facefoundry.<name>`` package (the repo's top-level folders in a
    checkout, ``site-packages/facefoundry/<name>`` in an installed wheel)."""
    import facefoundry

    roots: dict[str, Path] = {ROOT_MODULES: Path(facefoundry.__file__).parent}
    for base in map(Path, facefoundry.__path__):
        for init in sorted(base.glob("*/__init__.py")):
            if init.parent.name != ROOT_PACKAGE:  # the checkout holds the namespace folder too
                roots.setdefault(init.parent.name, init.parent)
    return roots


def module_file(name: str, roots: dict[str, Path]) -> Path | None:
    """``facefoundry.a.b`` -> ``<root of a>/b.py`` or ``<root of a>/b/__init__.py``."""
    parts = name.split(".")
    if parts[0] != ROOT_PACKAGE or len(parts) < 2:
        return None
    if parts[1] not in roots:
        module = roots[ROOT_MODULES] / f"{parts[1]}.py" if ROOT_MODULES in roots else None
        return module if len(parts) == 2 and module is not None and module.is_file() else None
    folder = roots[parts[1]].joinpath(*parts[2:])
    for candidate in (folder / "__init__.py", folder.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


@lru_cache(maxsize=1024)
def _parse(path: Path, mtime_ns: int) -> ast.Module:
    return ast.parse(path.read_bytes(), filename=str(path))


def _tree(path: Path) -> ast.Module:
    return _parse(path, path.stat().st_mtime_ns)


def imported_modules(name: str, tree: ast.Module, roots: dict[str, Path]) -> set[str]:
    """Project modules a module imports anywhere in its body (absolute or relative)."""
    package = (
        name if module_file(name, roots) and _is_package(name, roots) else name.rsplit(".", 1)[0]
    )
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Assign) and _is_exports_table(node):
            found.update(
                f"{name}.{v.value.split(':')[0]}"
                for v in node.value.values
                if isinstance(v, ast.Constant)
            )
    return {m for m in found if m.startswith(ROOT_PACKAGE + ".") and module_file(m, roots)}


def _is_package(name: str, roots: dict[str, Path]) -> bool:
    path = module_file(name, roots)
    return path is not None and path.name == "__init__.py"


def _is_exports_table(node: ast.Assign) -> bool:
    return any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets) and isinstance(
        node.value, ast.Dict
    )


def reachable_modules(entries: Iterable[str], roots: dict[str, Path] | None = None) -> list[str]:
    """Every project module the entry modules can import, themselves and their parent
    packages included (importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__``)."""
    roots = roots if roots is not None else package_roots()
    seen: set[str] = set()
    todo = list(entries)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = module_file(name, roots)
        if path is None:
            raise ValueError(f"{name} is not a facefoundry module")
        seen.add(name)
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(2, len(parts)))
        todo.extend(imported_modules(name, _tree(path), roots) - seen)
    return sorted(seen)


def _strip_docstrings(tree: ast.Module) -> ast.Module:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return tree


def source_digest(path: Path) -> str:
    """Hash of a module's syntax tree without docstrings; comments never reach the tree."""
    tree = _strip_docstrings(ast.parse(path.read_bytes(), filename=str(path)))
    return hashlib.sha256(ast.dump(tree, include_attributes=False).encode()).hexdigest()


def code_digest(entries: Iterable[str], roots: dict[str, Path] | None = None) -> str:
    """One hash over the code a stage runs (see the module docstring)."""
    roots = roots if roots is not None else package_roots()
    digest = hashlib.sha256()
    for name in reachable_modules(entries, roots):
        digest.update(name.encode())
        digest.update(source_digest(module_file(name, roots)).encode())
    return digest.hexdigest()[:16]
