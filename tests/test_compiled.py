"""The guard against stale compiled modules (edgegw/compiled.py), on a copy of the package's
entry files: a checkout whose compiled library is older than a compiled module's source
refuses to start and says how to fix it; an installed package is never second-guessed."""

from __future__ import annotations

import importlib.machinery
import os
import shutil
import subprocess
import sys
from pathlib import Path

from edgegw import compiled

from .conftest import ROOT


def fake_checkout(root: Path, with_pyproject: bool = True) -> Path:
    """The package's __init__ and compiled.py, every compiled module's source, and a compiled
    library built after all of them."""
    pkg = root / "edgegw"
    pkg.mkdir()
    shutil.copy(ROOT / "edgegw" / "__init__.py", pkg)
    shutil.copy(ROOT / "edgegw" / "compiled.py", pkg)
    for m in compiled.MODULES:
        path = root.joinpath(*m.split(".")).with_suffix(".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
        os.utime(path, (1_000_000, 1_000_000))
    os.utime(pkg / "compiled.py", (1_000_000, 1_000_000))
    lib = pkg / f"compiled__mypyc{importlib.machinery.EXTENSION_SUFFIXES[0]}"
    lib.write_bytes(b"")
    os.utime(lib, (2_000_000, 2_000_000))
    if with_pyproject:
        (root / "pyproject.toml").write_text("")
    return pkg


def start(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-P", "-c", "import edgegw"], cwd=root,
                          capture_output=True, text=True, timeout=30,
                          env={**os.environ, "PYTHONPATH": str(root)})


def test_fresh_compiled_modules_start(tmp_path: Path) -> None:
    fake_checkout(tmp_path)
    r = start(tmp_path)
    assert r.returncode == 0, r.stderr


def test_a_source_edited_after_the_build_stops_the_start_with_the_fix(tmp_path: Path) -> None:
    fake_checkout(tmp_path)
    (tmp_path / "edgegw" / "http" / "stream.py").write_text("# edited\n")
    r = start(tmp_path)
    assert r.returncode == 1
    assert r.stderr == ("edgegw: edgegw/http/stream.py changed after the compiled modules were "
                        "built: run `make compile` to rebuild them, or `make pure` to run "
                        "without them\n")


def test_a_changed_list_of_compiled_modules_is_stale_too(tmp_path: Path) -> None:
    pkg = fake_checkout(tmp_path)
    os.utime(pkg / "compiled.py")
    assert "edgegw/compiled.py changed" in start(tmp_path).stderr


def test_an_installed_package_is_not_compared(tmp_path: Path) -> None:
    fake_checkout(tmp_path, with_pyproject=False)
    (tmp_path / "edgegw" / "http" / "stream.py").write_text("# edited\n")
    r = start(tmp_path)
    assert r.returncode == 0, r.stderr
