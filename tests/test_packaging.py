"""The distribution installs one `convplan` namespace and nothing generic at the top level."""

import ast
import contextlib
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.support import ROOT

FOLDERS = ("kernels", "profiles", "selector", "api")   # installed as convplan.<folder>


def setuptools_table() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_folder_is_installed_under_convplan() -> None:
    table = setuptools_table()
    mapped = {f"convplan.{folder}": folder for folder in FOLDERS}
    assert table["package-dir"] == mapped
    on_disk = {"convplan"}
    for folder in FOLDERS:
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT).parts
            on_disk.add(".".join(("convplan", *relative)))
    assert sorted(table["packages"]) == sorted(on_disk)


def _absolute_imports(tree: ast.AST) -> list[str]:
    """Modules imported absolutely, also inside string constants that are Python code
    (programs given to ``python -c`` in a child process)."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and "import " in node.value:
            with contextlib.suppress(SyntaxError):
                names += _absolute_imports(ast.parse(node.value))
    return names


def test_nothing_imports_a_folder_by_its_bare_name() -> None:
    """`import kernels` would load a second copy of the package beside `convplan.kernels`
    (two registries) when run from the repository, and fails once installed."""
    offenders = []
    for path in ROOT.rglob("*.py"):
        if ".venv" in path.parts or "build" in path.parts:
            continue
        for name in _absolute_imports(ast.parse(path.read_text(), str(path))):
            if name.split(".")[0] in FOLDERS:
                offenders.append(f"{path.relative_to(ROOT)}: {name}")
    assert offenders == []


def test_the_wheel_holds_only_the_convplan_namespace(tmp_path: Path) -> None:
    source = tmp_path / "source"   # a copy, so the build leaves nothing in the repository
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for folder in ("convplan", *FOLDERS):
        shutil.copytree(ROOT / folder, source / folder, ignore=ignore)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(source)], check=True, timeout=300,
                   capture_output=True)
    [wheel] = tmp_path.glob("convplan-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"convplan"}
    for module in ("convplan/__init__.py", "convplan/cli.py", "convplan/kernels/blas.py",
                   "convplan/kernels/algorithms/patch.py", "convplan/selector/planning/ilp.py",
                   "convplan/selector/network/zoo.py", "convplan/selector/onnx/converters.py",
                   "convplan/selector/network/data/paper_layers.json",
                   "convplan/profiles/store.py", "convplan/api/service/app.py",
                   "convplan/api/cli/app.py"):
        assert module in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "convplan = convplan.cli:app" in zipfile.ZipFile(wheel).read(entry_points).decode()


@pytest.mark.parametrize("name", ["compile", "conv2d", "load_network", "plan", "Plan", "run",
                                  "Session"])
def test_the_public_surface_is_importable_from_the_top(name: str) -> None:
    import convplan

    assert callable(getattr(convplan, name))
    assert name in dir(convplan)


def test_import_convplan_is_light() -> None:
    """The top-level package imports its public names on first use only."""
    code = ("import sys, convplan; heavy = [m for m in ('numpy', 'onnx', 'fastapi', 'pulp') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out.strip() == "[]"
