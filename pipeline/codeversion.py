"""The code version of a stage: a hash of every project module its executor can run.

An edit to a helper must invalidate the stages that use it, and only those, so the version covers
the stage's module and every project module (top-level package `pipeline`, `components` or
`models`) it imports, directly or not. Imports are found statically from the source (no module
is imported or executed), by these rules:

1. `import a.b.c` depends on `a.b.c`; `from a.b import c, d` depends on `a.b.c` / `a.b.d` when
   they are modules, and on `a.b` (its `__init__`) when any imported name is not a module.
   Relative imports are resolved against the importing module's package. Imports anywhere in
   the file count (inside functions too, as lazy imports are still run).
2. A package `__init__` counts only when the package itself is imported (`import models`,
   `from models import build_model`), not when only one of its submodules is: stages import
   `components.examples` without depending on the stage list in `components/__init__.py`.
3. Modules loaded by name (`importlib.import_module`) count when their name appears as a string
   literal in the importing module in full (`"components.sources.synthetic"`), or, in a package
   `__init__`, relative to the package (`"cnn"` in `models/__init__.py`, which imports
   `f"models.{name}"`). Only modules that exist on disk are taken, so other strings are ignored;
   short strings in ordinary modules (a split named `"train"`) never count.

A stage defined outside the project packages (a plugin, a test's fake stages) is versioned by its
own file plus the project modules it imports. Non-Python files (templates, data) are not covered. The hash is over module names and file bytes,
so it is the same on every machine with the same sources.
"""
from __future__ import annotations

import ast
import hashlib
import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Optional

PROJECT_PACKAGES = ("pipeline", "components", "models")
PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class ModuleFile:
    name: str
    path: Path
    is_package: bool


class CodeIndex:
    """Finds project modules under `root` by name and the project modules each one imports."""

    def __init__(self, root: Path = PROJECT_ROOT, packages: Iterable[str] = PROJECT_PACKAGES):
        self.root = Path(root)
        self.packages = tuple(packages)

    def find(self, name: str) -> Optional[ModuleFile]:
        parts = name.split(".")
        if parts[0] not in self.packages or not all(part.isidentifier() for part in parts):
            return None
        base = self.root.joinpath(*parts)
        if (base / "__init__.py").is_file():
            return ModuleFile(name, base / "__init__.py", True)
        if base.with_suffix(".py").is_file():
            return ModuleFile(name, base.with_suffix(".py"), False)
        return None

    def imports(self, module: ModuleFile) -> set[str]:
        """Names of the project modules `module` imports (rules 1 to 3 of the module docstring)."""
        return set(_imports(self, module.name, module.is_package, module.path.read_bytes()))

    def outside(self, name: str) -> Optional[ModuleFile]:
        """A module outside the project packages (a plugin, a test's stages), found where Python finds it."""
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            return None
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            return None
        return ModuleFile(name, Path(spec.origin), spec.submodule_search_locations is not None)

    def closure(self, name: str) -> dict[str, Path]:
        """`name` and every project module it imports transitively, name -> file."""
        start = self.find(name) or self.outside(name)
        if start is None:
            return {}
        seen = {start.name: start}
        pending = [start]
        while pending:
            module = pending.pop()
            for dep in sorted(self.imports(module)):
                if dep not in seen:
                    found = self.find(dep)
                    if found is not None:
                        seen[dep] = found
                        pending.append(found)
        return {n: m.path for n, m in sorted(seen.items())}

    def version(self, name: str) -> str:
        """sha256 over the names and bytes of `name`'s import closure."""
        files = self.closure(name)
        if not files:
            raise LookupError(f"module {name!r}: not found under {self.root} (expected a module of "
                              f"one of the packages {', '.join(self.packages)})")
        digest = hashlib.sha256()
        for module_name, path in files.items():
            digest.update(module_name.encode() + b"\0" + path.read_bytes() + b"\0")
        return digest.hexdigest()


@lru_cache(maxsize=1024)
def _imports(index: CodeIndex, name: str, is_package: bool, source: bytes) -> frozenset[str]:
    tree = ast.parse(source, filename=name)
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()

    def add_from(base: str, names: list[str]) -> None:
        package_itself = False
        for alias in names:
            sub = f"{base}.{alias}" if base else alias
            if alias != "*" and index.find(sub) is not None:
                found.add(sub)
            else:
                package_itself = True
        if package_itself and base:
            found.add(base)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                anchor = ".".join(parts[:len(parts) - (node.level - 1)]) if node.level > 1 else package
                base = f"{anchor}.{node.module}" if node.module else anchor
            else:
                base = node.module or ""
            add_from(base, [alias.name for alias in node.names])
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and len(node.value) < 200:
            full = node.value if "." in node.value else None
            relative = f"{package}.{node.value}" if is_package else None
            for candidate in (full, relative):
                if candidate and candidate != name and index.find(candidate) is not None:
                    found.add(candidate)
    found.discard(name)
    return frozenset(n for n in found if n.split(".")[0] in index.packages)


_DEFAULT_INDEX = CodeIndex()


def module_version(name: str, index: CodeIndex | None = None) -> str:
    return (index or _DEFAULT_INDEX).version(name)


def stage_code_version(stage, index: CodeIndex | None = None) -> str:
    """The code version of a `Stage`: of its `module`, else of the module defining its executor."""
    name = stage.module or getattr(stage.executor, "__module__", "")
    return module_version(name, index)
