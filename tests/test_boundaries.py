"""Import boundaries: what imports fast, and which way imports run between layers.

``nas --help``, ``nas ls``, the service and the driver's bookkeeping must not pay for torch, Ray
or ONNX Runtime (seconds each), so the modules below are imported in a fresh interpreter and
``sys.modules`` is checked. The layering test reads every module's imports (top level, lazy and
``TYPE_CHECKING`` ones alike: all are dependencies) and fails on an import from a lower layer to
a higher one.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "ray", "onnxruntime")

# Modules that must import without torch, ray or onnxruntime (docs/internals.md lists them).
LIGHT = (
    "nas.architecture", "nas.errors", "nas.results", "nas.specs", "nas.objectives", "nas.space",
    "nas.hardware", "nas.builtin", "nas.pareto", "nas.fronts", "nas.plots", "nas.onnx_io",
    "nas.affinity", "nas.names", "nas.dates", "nas.terminal", "nas.hf_config", "nas.derivation",
    "nas.checkpoint", "nas.tokenizer", "nas.model_card", "nas.store", "nas.report", "nas.cli",
)

# Layers, lowest first; a module may import its own layer and those below. The driver (search)
# sits above the workers it calls, the store it writes and the fronts it summarises with; the
# readers of results (service, CLI, report, export) sit on top.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("foundations", ("nas.architecture", "nas.errors", "nas.results", "nas.specs", "nas.objectives",
                     "nas.pareto", "nas.hardware", "nas.builtin", "nas.onnx_io", "nas.affinity",
                     "nas.names", "nas.dates", "nas.terminal", "nas.util", "nas.states", "nas.fidelity",
                     "nas.tokenizer", "nas.hf_config", "nas.derivation", "nas.schedule")),
    ("space", ("nas.space",)),
    ("workers", ("nas.data", "nas.model", "nas.proxy", "nas.onnx_export", "nas.latency",
                 "nas.evaluate", "nas.checkpoint", "nas.derive", "nas.distill", "nas.parent",
                 "nas.machine", "nas.workloads", "nas.memory", "nas.gpu_share")),
    ("store", ("nas.store",)),
    ("fronts", ("nas.fronts", "nas.plots")),
    ("search", ("nas.search", "nas.retime")),
    # "nas" is the package's own __init__ (`nas.load`), not everything under it.
    ("readers", ("nas.service", "nas.cli", "nas.report", "nas.export", "nas.pick", "nas.model_card",
                 "nas.__main__", "nas")),
)


def _layer(module: str) -> int | None:
    """Index in `LAYERS` of the longest prefix naming ``module`` (``nas.search.driver`` ->
    search); None for a module no layer names."""
    best: tuple[int, int] | None = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            named = module == prefix or (prefix != "nas" and module.startswith(prefix + "."))
            if named and (best is None or len(prefix) > best[1]):
                best = (index, len(prefix))
    return None if best is None else best[0]


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / "nas").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if "migrations" in parts:  # Alembic's scripts, run by Alembic, never imported by us
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(module: str, path: Path) -> set[str]:
    """Every ``nas`` module ``module`` imports, resolving relative imports."""
    modules = _modules()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            for alias in node.names:
                # `from nas import plots` imports the module nas.plots, not the package's code.
                submodule = f"{target}.{alias.name}"
                found.add(submodule if submodule in modules else target)
    return {name for name in found if name in modules and name != module}


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


@pytest.mark.parametrize("module", LIGHT)
def test_module_imports_without_heavy_dependencies(module):
    out = _run(f"""
        import sys
        import {module}
        print(",".join(m for m in {HEAVY!r} if m in sys.modules))
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"importing {module} imports {out.stdout.strip()}"


def test_service_app_starts_without_heavy_dependencies(tmp_path):
    out = _run(f"""
        import sys
        from nas.service import create_app
        from nas.store import Store

        create_app(Store({f"sqlite:///{tmp_path / 'nas.db'}"!r}))
        print(",".join(m for m in {HEAVY!r} if m in sys.modules))
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"create_app imports {out.stdout.strip()}"


def test_report_does_not_need_the_web_framework():
    # `nas report` renders the service's templates offline; FastAPI is for `nas serve` only.
    out = _run("""
        import sys
        import nas.report
        print(",".join(m for m in ("fastapi", "starlette", "uvicorn") if m in sys.modules))
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"nas.report imports {out.stdout.strip()}"


def test_every_module_has_a_layer():
    missing = sorted(m for m in _modules() if _layer(m) is None)
    assert not missing, f"add these modules to a layer in LAYERS: {missing}"


def test_no_import_runs_from_a_lower_layer_to_a_higher_one():
    names = [name for name, _ in LAYERS]
    wrong = []
    for module, path in _modules().items():
        own = _layer(module)
        if own is None:
            continue  # reported by test_every_module_has_a_layer
        for target in sorted(_imports(module, path)):
            theirs = _layer(target)
            if theirs is not None and theirs > own:
                wrong.append(f"{module} ({names[own]}) imports {target} ({names[theirs]})")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)
