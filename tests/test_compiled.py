"""The modules setup.py compiles with mypyc, and the suite's refusal to test stale ones."""

from __future__ import annotations

import ast
import os
import tomllib
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

from tests.compiled import PACKAGE, stale_compiled_modules

REPO = PACKAGE.parent


def compiled_list() -> list[str]:
    """setup.py's COMPILED, read without running setup.py (which would build)."""
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "COMPILED" for t in node.targets
        ):
            value = ast.literal_eval(node.value)
            assert isinstance(value, list)
            return value
    raise AssertionError("setup.py has no COMPILED list")


def test_every_module_setup_compiles_is_a_module_of_the_package() -> None:
    listed = compiled_list()
    assert listed
    for path in listed:
        assert path.startswith("gateway/") and (REPO / path).is_file(), path


def package_with(tmp_path: Path, source_age: float, compiled_age: float) -> Path:
    package = tmp_path / "gateway"
    (package / "upstream").mkdir(parents=True)
    source = package / "upstream" / "http1.py"
    compiled = package / "upstream" / f"http1{EXTENSION_SUFFIXES[0]}"
    source.write_text("")
    compiled.write_bytes(b"")
    now = source.stat().st_mtime
    os.utime(source, (now - source_age, now - source_age))
    os.utime(compiled, (now - compiled_age, now - compiled_age))
    return package


def test_a_compiled_module_older_than_its_source_is_stale(tmp_path: Path) -> None:
    package = package_with(tmp_path, source_age=10, compiled_age=60)
    assert stale_compiled_modules(package) == ["gateway/upstream/http1.py"]


def test_a_compiled_module_newer_than_its_source_is_not_stale(tmp_path: Path) -> None:
    package = package_with(tmp_path, source_age=60, compiled_age=10)
    assert stale_compiled_modules(package) == []


def test_a_compiled_module_whose_source_is_gone_is_stale(tmp_path: Path) -> None:
    package = package_with(tmp_path, source_age=60, compiled_age=10)
    (package / "upstream" / "http1.py").unlink()
    assert stale_compiled_modules(package) == ["gateway/upstream/http1.py"]


def test_a_module_compiled_for_another_python_is_not_looked_at(tmp_path: Path) -> None:
    package = package_with(tmp_path, source_age=10, compiled_age=60)
    compiled = next((package / "upstream").glob("http1.*.so"))
    compiled.rename(compiled.with_name("http1.cpython-29-x86_64-linux-gnu.so"))
    assert stale_compiled_modules(package) == []


def test_the_build_sees_every_runtime_dependency() -> None:
    """mypyc type-checks what it compiles in the build's own environment: [build-system]
    requires must name every dependency of the package, as [project] states it."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    requires = set(project["build-system"]["requires"])
    assert set(project["project"]["dependencies"]) <= requires
