"""Every public definition says what it does: a docstring on each public contract.

Public means: a module-level function or class whose name does not start with ``_``, and
each method (or nested class) of a public class whose name does not start with ``_``.
Not counted: dunder methods, property setters and deleters, ``typing.overload`` stubs,
and a method that overrides one of the same name documented in a base class defined in
these packages (the base's docstring is the contract; ``pydoc`` shows it).  Enum members
are assignments, not definitions, so they are never counted.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("qemu_device", "agent/host", "agent/guest", "msixlab_common", "images", "bench",
            "mutants")

Def = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


def _modules() -> Iterator[tuple[Path, ast.Module]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield path, ast.parse(path.read_text(), filename=str(path))


def _decorator_names(node: Def) -> set[str]:
    names = set()
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if isinstance(target, ast.Attribute):
            names.add(target.attr)              # @x.setter -> "setter", @typing.overload
        elif isinstance(target, ast.Name):
            names.add(target.id)
    return names


def _base_names(cls: ast.ClassDef) -> list[str]:
    names = []
    for base in cls.bases:
        if isinstance(base, ast.Subscript):     # Generic[T], Protocol[T]
            base = base.value
        if isinstance(base, ast.Attribute):
            names.append(base.attr)
        elif isinstance(base, ast.Name):
            names.append(base.id)
    return names


def _classes_by_name(modules: list[tuple[Path, ast.Module]]) -> dict[str, list[ast.ClassDef]]:
    """Every class defined in the packages, by name (a name may be defined more than once)."""
    classes: dict[str, list[ast.ClassDef]] = {}
    for _, tree in modules:
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                classes.setdefault(node.name, []).append(node)
    return classes


def _base_documents(cls: ast.ClassDef, method: str, classes: dict[str, list[ast.ClassDef]],
                    seen: set[str] | None = None) -> bool:
    """Whether a base class of ``cls`` (found by name in the packages) documents ``method``."""
    seen = set() if seen is None else seen
    for name in _base_names(cls):
        if name in seen:
            continue
        seen.add(name)
        for base in classes.get(name, ()):
            for node in base.body:
                if (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                        and node.name == method and ast.get_docstring(node)):
                    return True
            if _base_documents(base, method, classes, seen):
                return True
    return False


def _is_public(node: Def) -> bool:
    return not node.name.startswith("_")


def _class_gaps(cls: ast.ClassDef, prefix: str, classes: dict[str, list[ast.ClassDef]]
                ) -> Iterator[tuple[int, str]]:
    for node in cls.body:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        if not _is_public(node):
            continue
        name = f"{prefix}.{node.name}"
        if isinstance(node, ast.ClassDef):
            if not ast.get_docstring(node):
                yield node.lineno, name
            yield from _class_gaps(node, name, classes)
            continue
        if _decorator_names(node) & {"setter", "deleter", "overload"}:
            continue
        if ast.get_docstring(node) or _base_documents(cls, node.name, classes):
            continue
        yield node.lineno, name


def undocumented(modules: list[tuple[Path, ast.Module]]) -> list[str]:
    """``path:line: name`` for every public definition in ``modules`` without a docstring."""
    classes = _classes_by_name(modules)
    gaps = []
    for path, tree in modules:
        where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        for node in tree.body:
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            if not _is_public(node):
                continue
            if not ast.get_docstring(node) and "overload" not in _decorator_names(node):
                gaps.append(f"{where}:{node.lineno}: {node.name}")
            if isinstance(node, ast.ClassDef):
                gaps.extend(f"{where}:{line}: {name}"
                            for line, name in _class_gaps(node, node.name, classes))
    return gaps


def test_checker_sees_a_missing_docstring(tmp_path):
    """The checker itself: a bare public function and method are found, the rest is not."""
    source = '''
class Base:
    def run(self):
        """Documented contract."""
class Thing(Base):
    """A thing."""
    def run(self):
        pass
    def bare(self):
        pass
    @property
    def size(self):
        """Its size."""
    @size.setter
    def size(self, value):
        pass
    def __len__(self):
        return 0
    def _private(self):
        pass
def naked():
    pass
def _hidden():
    pass
'''
    path = tmp_path / "sample.py"
    assert undocumented([(path, ast.parse(source))]) == [
        f"{path}:2: Base", f"{path}:9: Thing.bare", f"{path}:21: naked"]


def test_every_public_definition_has_a_docstring():
    gaps = undocumented(list(_modules()))
    assert not gaps, (f"{len(gaps)} public definitions without a docstring (say what each "
                      "does and its contract):\n" + "\n".join(gaps))
