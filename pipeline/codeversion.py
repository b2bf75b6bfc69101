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
import json
import os
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

    def __init__(self, root: Path = PROJECT_ROOT, packages: Iterable[str] = PROJECT_PACKAGES,
                 scans: Optional["ScanCache"] = None):
        self.root = Path(root)
        self.packages = tuple(packages)
        self.scans = scans

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
        if self.scans is not None:
            self.scans.save()
        return digest.hexdigest()


@dataclass(frozen=True)
class SourceScan:
    """What one source file names, before any name is looked up on disk: its import statements
    `(level, module, names)` (`import a.b` is `(-1, "", ("a.b",))`) and its short string literals."""
    imports: tuple[tuple[int, str, tuple[str, ...]], ...]
    strings: tuple[str, ...]


def scan_source(source: bytes, filename: str = "<source>") -> SourceScan:
    """Parse `source` and walk every node (imports inside functions count, rule 1)."""
    imports, strings = [], set()
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Import):
            imports.append((-1, "", tuple(alias.name for alias in node.names)))
        elif isinstance(node, ast.ImportFrom):
            imports.append((node.level, node.module or "", tuple(alias.name for alias in node.names)))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and len(node.value) < 200 \
                and node.value.replace(".", "").isidentifier():
            strings.add(node.value)
    return SourceScan(tuple(imports), tuple(sorted(strings)))


class ScanCache:
    """Source scans kept on disk by the sha256 of the file's bytes, so that a rerun does not parse
    the project again: parsing and walking ~120 modules is most of a cached rerun's 2 s here.

    A scan depends only on the bytes, so a hit is always right; which scanned names are project
    modules is still decided on disk at every run (rule 1 asks whether `a.b.c` exists). The file is
    `$CONVPIPE_CACHE/code-scans.json` (default ~/.cache/convpipe); one that cannot be read is
    ignored and one that cannot be written is skipped: the scan is then only slower.
    """

    VERSION = 1

    def __init__(self, path: Optional[Path] = None):
        self._path = path
        self._scans: Optional[dict[str, SourceScan]] = None
        self._dirty = False

    @property
    def path(self) -> Path:
        if self._path is not None:
            return self._path
        return Path(os.environ.get("CONVPIPE_CACHE") or Path.home() / ".cache" / "convpipe") / "code-scans.json"

    def _load(self) -> dict[str, SourceScan]:
        if self._scans is None:
            self._scans = {}
            try:
                document = json.loads(self.path.read_text())
                if document.get("version") == self.VERSION:
                    for key, (imports, strings) in document["scans"].items():
                        self._scans[key] = SourceScan(tuple((lvl, mod, tuple(names)) for lvl, mod, names in imports),
                                                      tuple(strings))
            except (OSError, ValueError, KeyError, TypeError):
                self._scans = {}
        return self._scans

    def scan(self, source: bytes, filename: str) -> SourceScan:
        key = hashlib.sha256(source).hexdigest()
        scans = self._load()
        found = scans.get(key)
        if found is None:
            found = scans[key] = scan_source(source, filename)
            self._dirty = True
        return found

    def save(self) -> None:
        """Write the scans when some were new (atomically: a reader sees the old file or the new)."""
        if not self._dirty or self._scans is None:
            return
        document = {"version": self.VERSION,
                    "scans": {key: [[list(i) for i in s.imports], list(s.strings)] for key, s in self._scans.items()}}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(document, separators=(",", ":")))
            os.replace(tmp, self.path)
            self._dirty = False
        except OSError:
            pass


@lru_cache(maxsize=1024)
def _imports(index: CodeIndex, name: str, is_package: bool, source: bytes) -> frozenset[str]:
    scan = index.scans.scan(source, name) if index.scans is not None else scan_source(source, name)
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()

    def add_from(base: str, names: tuple[str, ...]) -> None:
        package_itself = False
        for alias in names:
            sub = f"{base}.{alias}" if base else alias
            if alias != "*" and index.find(sub) is not None:
                found.add(sub)
            else:
                package_itself = True
        if package_itself and base:
            found.add(base)

    for level, module, names in scan.imports:
        if level < 0:
            found.update(names)
        elif level:
            parts = package.split(".")
            anchor = ".".join(parts[:len(parts) - (level - 1)]) if level > 1 else package
            add_from(f"{anchor}.{module}" if module else anchor, names)
        else:
            add_from(module, names)
    for value in scan.strings:
        full = value if "." in value else None
        relative = f"{package}.{value}" if is_package else None
        for candidate in (full, relative):
            if candidate and candidate != name and index.find(candidate) is not None:
                found.add(candidate)
    found.discard(name)
    return frozenset(n for n in found if n.split(".")[0] in index.packages)


_DEFAULT_INDEX = CodeIndex(scans=ScanCache())


def module_version(name: str, index: CodeIndex | None = None) -> str:
    return (index or _DEFAULT_INDEX).version(name)


def stage_code_version(stage, index: CodeIndex | None = None) -> str:
    """The code version of a `Stage`: of its `module`, else of the module defining its executor."""
    name = stage.module or getattr(stage.executor, "__module__", "")
    return module_version(name, index)
