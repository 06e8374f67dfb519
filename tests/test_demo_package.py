"""The demo model's package: light to import, the one reader of the cache folder's setting,
and no runtime module depending on `jupyter_qwen.testing`."""

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from jupyter_qwen import demo, testing
from jupyter_qwen.demo import cache
from jupyter_qwen.demo.shapes import SHAPES, SIZE_FIELDS, Shape, config_fields

PACKAGE = Path(demo.__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "tokenizers", "safetensors", "langchain_core")


def runtime_modules() -> list[Path]:
    return [path for path in sorted(PACKAGE.rglob("*.py")) if path.name != "testing.py"
            or path.parent != PACKAGE]


def imported_modules(path: Path, source: str | None = None) -> set[str]:
    """Every module an `import` or `from ... import` in the file names, relative ones resolved,
    and for `from package import name` also `package.name`."""
    package = path.relative_to(PACKAGE.parent).parts[:-1]
    names: set[str] = set()
    tree = ast.parse(path.read_text() if source is None else source, str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else ()
            module = ".".join([*base, *([node.module] if node.module else [])])
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("source", [
    "import jupyter_qwen.testing", "from jupyter_qwen import testing",
    "from jupyter_qwen.testing import make_tiny_qwen3", "def f():\n    from .. import testing",
    "from ..testing import SHAPES"])
def test_the_import_scan_sees_every_spelling(source):
    assert "jupyter_qwen.testing" in imported_modules(PACKAGE / "notebook" / "probe.py", source)
    assert "jupyter_qwen.testing" not in imported_modules(PACKAGE / "notebook" / "probe.py",
                                                          "from . import testing")


def test_no_runtime_module_imports_the_testing_module():
    offenders = [str(path.relative_to(PACKAGE.parent)) for path in runtime_modules()
                 if "jupyter_qwen.testing" in imported_modules(path)]
    assert len(runtime_modules()) > 50
    assert offenders == []


def names_the_cache_setting(path: Path) -> bool:
    """Whether the code (not the prose) holds the string "JUPYTER_QWEN_CACHE"."""
    return any(isinstance(node, ast.Constant) and node.value == cache.CACHE_ENV
               for node in ast.walk(ast.parse(path.read_text(), str(path))))


def test_only_the_cache_module_reads_the_cache_setting():
    readers = [str(path.relative_to(PACKAGE)) for path in runtime_modules()
               if names_the_cache_setting(path)]
    assert readers == ["demo/cache.py"]


@pytest.mark.parametrize("module", ["jupyter_qwen.demo", "jupyter_qwen.demo.cache",
                                    "jupyter_qwen.demo.cli", "jupyter_qwen.testing"])
def test_importing_loads_no_torch_transformers_or_tokenizers(module):
    code = (f"import sys, {module}\n"
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=True)
    assert result.stdout.strip() == "[]"


def test_the_package_names_resolve_to_their_modules():
    for name in demo.__all__:
        assert getattr(demo, name) is not None, name
    assert set(demo.__all__) <= set(dir(demo))
    with pytest.raises(AttributeError):
        _ = demo.no_such_name


def test_testing_names_the_demo_packages_writer():
    from jupyter_qwen.demo import checkpoint, shapes

    assert testing.make_tiny_qwen3 is checkpoint.make_tiny_qwen3
    assert testing.SHAPES is shapes.SHAPES and testing.parameter_count is shapes.parameter_count


def test_cache_dir_is_the_setting_else_the_default(monkeypatch, tmp_path):
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path))
    assert cache.cache_dir() == tmp_path
    assert cache.cache_dir(default=Path("/elsewhere")) == tmp_path
    assert cache.demo_folder() == tmp_path / cache.demo_model_name()
    monkeypatch.setenv(cache.CACHE_ENV, "")
    assert cache.cache_dir() == Path.home() / ".cache" / "jupyter_qwen"
    monkeypatch.delenv(cache.CACHE_ENV)
    assert cache.cache_dir() == Path.home() / ".cache" / "jupyter_qwen"
    assert cache.cache_dir(default=tmp_path / "data") == tmp_path / "data"


def test_control_panel_finds_recent_models_and_the_demo_through_cache_dir(monkeypatch,
                                                                          tmp_path):
    from jupyter_core.paths import jupyter_data_dir

    from jupyter_qwen.notebook import models

    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path))
    assert models.recent_path() == tmp_path / "recent.json"
    assert models.demo_folder() == tmp_path / cache.demo_model_name()
    monkeypatch.delenv(cache.CACHE_ENV)
    assert models.recent_path() == \
        Path(jupyter_data_dir()) / "jupyter_qwen" / "recent.json"
    assert models.demo_folder() == \
        Path.home() / ".cache" / "jupyter_qwen" / cache.demo_model_name()


def test_shape_fields_are_qwen3_config_fields():
    from transformers import Qwen3Config

    parameters = inspect.signature(Qwen3Config.__init__).parameters
    for name, shape in SHAPES.items():
        fields = config_fields(shape)
        assert set(fields) <= set(parameters), name
        config = Qwen3Config(**fields)
        assert {field: getattr(config, field) for field in fields if field != "dtype"} == \
            {field: value for field, value in fields.items() if field != "dtype"}
        assert str(config.dtype).removeprefix("torch.") == shape.dtype
    assert set(config_fields(SHAPES["tiny"])) == {*SIZE_FIELDS, "dtype"}
    assert set(SIZE_FIELDS) < set(Shape.__dataclass_fields__), "sizes are the model's fields"


def test_the_demo_package_stands_alone():
    """It builds checkpoints with transformers, not with jupyter_qwen's engine or server: of
    the rest of the package it reads only the model's (torch-free) config and, for FP8 and
    AWQ folders, the quantized formats' tensor writer."""
    outside = {str(path.relative_to(PACKAGE)): sorted(
        name for name in imported_modules(path)
        if name.startswith("jupyter_qwen") and not name.startswith("jupyter_qwen.demo"))
        for path in sorted((PACKAGE / "demo").glob("*.py"))}
    assert len(outside) >= 9
    assert {path: names for path, names in outside.items() if names} == {
        "demo/shapes.py": ["jupyter_qwen.model.config", "jupyter_qwen.model.config.Qwen3Config"],
        "demo/weights.py": ["jupyter_qwen.model.quant.linear",
                            "jupyter_qwen.model.quant.linear.quantized_tensors"]}
