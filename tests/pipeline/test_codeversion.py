"""Code versions follow every project module a stage imports, and nothing else."""
import textwrap
from pathlib import Path

import pytest

from pipeline.codeversion import CodeIndex, stage_code_version
from pipeline.stage import Stage


def write(root: Path, files: dict) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


@pytest.fixture
def tree(tmp_path):
    write(tmp_path, {
        "pipeline/__init__.py": "",
        "pipeline/stage.py": "X = 1\n",
        "components/__init__.py": "STAGE_ORDER = ('ingest', 'train')\n",
        "components/examples.py": "from . import helpers\n",
        "components/helpers.py": "def f():\n    return 1\n",
        "components/unrelated.py": "Y = 2\n",
        "components/sources/__init__.py": "MODULES = {'a': 'components.sources.alpha'}\n",
        "components/sources/alpha.py": "from ..helpers import f\n",
        "components/sources/beta.py": "Z = 3\n",
        "components/ingest.py": """
            from pipeline.stage import X
            from components.sources import MODULES
            def run():
                import components.examples
                return "train"   # a split name, not the train stage
            """,
        "components/train.py": "from components import examples\nimport models\n",
        "models/__init__.py": "import importlib\n_REG = ('cnn',)\ndef load(n):\n    importlib.import_module(f'models.{n}')\n",
        "models/cnn.py": "from .layers.sum import SumPooling\n",
        "models/layers/__init__.py": "",
        "models/layers/sum.py": "class SumPooling: pass\n",
        "models/fcn.py": "Q = 1\n",
    })
    return tmp_path


def test_closure_follows_every_import_form(tree):
    index = CodeIndex(tree)
    assert sorted(index.closure("components.ingest")) == [
        "components.examples",        # lazy `import` inside a function
        "components.helpers",         # relative `from . import` in examples, `from ..helpers` in alpha
        "components.ingest",
        "components.sources",         # package imported for a name defined in its __init__
        "components.sources.alpha",   # named by a full dotted string in sources/__init__
        "pipeline.stage",
    ]
    # `from components import examples` takes the submodule, not the stage list in components/__init__;
    # `import models` takes models/__init__ and what it loads by name ('cnn' -> models.cnn)
    assert sorted(index.closure("components.train")) == [
        "components.examples", "components.helpers", "components.train", "models", "models.cnn",
        "models.layers.sum"]


def test_version_changes_when_an_imported_helper_changes(tree):
    index = CodeIndex(tree)
    before = {m: index.version(m) for m in ("components.ingest", "components.train")}
    (tree / "components/unrelated.py").write_text("Y = 3\n")
    (tree / "components/sources/beta.py").write_text("Z = 4\n")
    (tree / "models/fcn.py").write_text("Q = 2\n")
    assert {m: index.version(m) for m in before} == before
    helpers = tree / "components/helpers.py"
    helpers.write_text("def f():\n    return 2\n")
    after = {m: index.version(m) for m in before}
    assert after["components.ingest"] != before["components.ingest"]
    assert after["components.train"] != before["components.train"]
    (tree / "models/layers/sum.py").write_text("class SumPooling:\n    size = 2\n")
    assert index.version("components.train") != after["components.train"]
    assert index.version("components.ingest") == after["components.ingest"]


def test_version_is_a_hash_of_names_and_bytes(tree):
    import hashlib
    digest = hashlib.sha256(b"components.helpers\0" + (tree / "components/helpers.py").read_bytes() + b"\0")
    assert CodeIndex(tree).version("components.helpers") == digest.hexdigest()


def test_unknown_module_is_an_error(tree):
    with pytest.raises(LookupError, match="module 'components.nothing': not found"):
        CodeIndex(tree).version("components.nothing")


def test_real_project_stage_closure_excludes_other_stages():
    index = CodeIndex()
    closure = index.closure("pipeline.runner")
    assert "pipeline.metadata" in closure and "pipeline.lock" in closure
    assert not any(name.startswith(("components", "models")) for name in closure)


def test_stage_outside_the_project_is_versioned_by_its_file():
    from tests.pipeline import fake_stages
    version = stage_code_version(fake_stages.A)
    assert len(version) == 64
    closure = CodeIndex().closure("tests.pipeline.fake_stages")
    assert sorted(closure) == ["pipeline.config", "pipeline.config.base", "pipeline.config.loading",  # the package
                              "pipeline.config.sections", "pipeline.config.sources", "pipeline.stage",
                              "tests.pipeline.fake_stages"]
    assert stage_code_version(Stage("x", {}, lambda c: None, lambda c: {}, module="tests.pipeline.fake_stages")) == version


def test_a_scan_cache_on_disk_gives_the_same_versions_and_skips_the_parse(tree, tmp_path_factory, monkeypatch):
    from pipeline import codeversion

    cache_file = tmp_path_factory.mktemp("cache") / "code-scans.json"
    fresh = CodeIndex(tree).version("components.train")
    first = CodeIndex(tree, scans=codeversion.ScanCache(cache_file))
    assert first.version("components.train") == fresh
    assert cache_file.is_file()

    def no_parse(*args, **kwargs):
        raise AssertionError("parsed although the scan was on disk")

    codeversion._imports.cache_clear()
    monkeypatch.setattr(codeversion, "scan_source", no_parse)
    assert CodeIndex(tree, scans=codeversion.ScanCache(cache_file)).version("components.train") == fresh
    # an edited helper is scanned again (its bytes have a new digest) and changes the version
    (tree / "components/helpers.py").write_text("import models.fcn\n")
    monkeypatch.undo()
    edited = CodeIndex(tree, scans=codeversion.ScanCache(cache_file))
    assert edited.version("components.train") != fresh
    assert "models.fcn" in edited.closure("components.train")


def test_an_unreadable_scan_cache_is_ignored(tree, tmp_path):
    from pipeline import codeversion

    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert CodeIndex(tree, scans=codeversion.ScanCache(broken)).version("components.train") \
        == CodeIndex(tree).version("components.train")
