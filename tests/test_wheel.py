"""A normal (non-editable) install works: the wheel carries the shipped spaces and profiles.

The wheel is built from a copy of the package and installed with ``--no-deps`` into a fresh
virtual environment; the dependencies come from this test's own environment through a ``.pth``
line (a plain path: the ``.pth`` files there, among them the editable install's finder, are not
run), so nothing is downloaded and the environment cannot see this checkout. Everything then runs
from an unrelated directory, where no walk up from any file finds ``search_spaces/``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"

pytestmark = pytest.mark.slow


def _run(args: list[str], cwd: Path, env: dict[str, str],
         timeout: int = 300) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(args)} exited {out.returncode}:\n{out.stdout}\n{out.stderr}"
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str], Path]:
    """(the fresh environment's python, its environment variables, an unrelated directory)."""
    tmp = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["NAS_CACHE_DIR"] = str(tmp / "cache")
    # A copy, so the build writes nothing into the checkout (build/, *.egg-info).
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "nas", src / "nas", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    # No build isolation: the setuptools of this environment builds it, offline.
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
          "-w", str(tmp / "dist"), str(src)], cwd=tmp, env=env)
    wheel = next((tmp / "dist").glob("nas-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    for shipped in ("nas/builtin/search_spaces/tiny.yaml", "nas/builtin/search_spaces/slm.yaml",
                    "nas/builtin/hardware_profiles/cpu-1t.yaml", "nas/service/templates/search.html",
                    "nas/templates/model_card.md.j2", "nas/store/migrations/env.py"):
        assert shipped in names, f"{shipped} is not in {wheel.name}"

    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp, env=env)
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--quiet",
          str(wheel)], cwd=tmp, env=env)
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=tmp, env=env).stdout.strip())
    (site / "zz_nas_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    return python, env, elsewhere


def test_wheel_install_finds_shipped_spaces_and_profiles(installed):
    python, env, elsewhere = installed
    code = textwrap.dedent(f"""
        import nas, nas.space, nas.hardware
        assert nas.__file__.startswith({str(python.parent.parent)!r}), nas.__file__
        assert {{"tiny", "slm"}} <= set(nas.space.list_spaces()), nas.space.list_spaces()
        assert nas.space.load_space("tiny").name == "tiny"
        assert {{"cpu-1t", "cpu-2t", "cpu-1t-int8"}} <= set(nas.hardware.list_profiles())
        assert nas.hardware.load_profile("cpu-1t").name == "cpu-1t"
    """)
    _run([str(python), "-c", code], cwd=elsewhere, env=env)


def test_wheel_install_runs_a_search(installed):
    python, env, elsewhere = installed
    nas = python.parent / "nas"
    _run([str(nas), "search", str(DATA / "e2e.yaml"), "--profiles", str(DATA / "e2e-1t.yaml"),
          "--name", "w", "--trials", "1", "--db", "sqlite:///w.db", "--no-progress"],
         cwd=elsewhere, env=env, timeout=600)
    out = _run([str(nas), "ls", "--json", "--db", "sqlite:///w.db"], cwd=elsewhere, env=env)
    assert '"w"' in out.stdout and "finished" in out.stdout, out.stdout
