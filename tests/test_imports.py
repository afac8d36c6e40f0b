"""Every module of the package imports, whichever is imported first: catches import cycles
("cannot import name ... from partially initialized module") that one fixed order hides.

Modules are listed with ``pkgutil.walk_packages`` over ``facemtl``. Each order runs in its own
fresh interpreter: all modules sorted, all reverse sorted, and each module alone first (one
interpreter for all of those: third-party libraries stay loaded, every ``facemtl`` module is
dropped from ``sys.modules`` before the next one is imported, so each starts the package cold).
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import pytest

import facemtl

# ``python -m facemtl`` runs the CLI when imported; it is checked to exist, not imported.
ENTRY_SCRIPTS = {"facemtl.__main__"}

_SCRIPT = r"""
import importlib, json, sys, traceback

modules, mode = json.loads(sys.argv[1]), sys.argv[2]
failures = []


def attempt(name, context):
    try:
        importlib.import_module(name)
    except BaseException as exc:  # a SystemExit at import time is a failure too
        last = traceback.extract_tb(exc.__traceback__)[-1]
        failures.append(f"{name} ({context}): {type(exc).__name__}: {exc} [{last.filename}:{last.lineno}]")


if mode == "alone":
    import cv2, numpy, torch  # noqa: F401  (kept loaded: only facemtl is made cold again)
    for name in modules:
        for key in [k for k in sys.modules if k == "facemtl" or k.startswith("facemtl.")]:
            del sys.modules[key]
        attempt(name, "imported first")
else:
    for i, name in enumerate(modules):
        attempt(name, f"{mode} order, after {modules[i - 1] if i else 'nothing'}")
print(json.dumps(failures))
"""


def package_modules() -> list[str]:
    errors: list[str] = []
    found = {m.name for m in pkgutil.walk_packages(facemtl.__path__, "facemtl.", onerror=errors.append)}
    assert not errors, f"packages that fail to import while walking: {errors}"
    return sorted({"facemtl", *found} - ENTRY_SCRIPTS)


def run_order(modules: list[str], mode: str) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, json.dumps(modules), mode],
                          capture_output=True, text=True, timeout=180)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_module_list_is_the_whole_package():
    modules = package_modules()
    # subpackages and leaf modules both found (walk_packages recursed), and nothing outside facemtl
    for expected in ("facemtl.models", "facemtl.models.registry", "facemtl.data.formats.mtfl", "facemtl.cli"):
        assert expected in modules
    assert all(m == "facemtl" or m.startswith("facemtl.") for m in modules)
    import importlib.util

    for script in ENTRY_SCRIPTS:
        assert importlib.util.find_spec(script) is not None, script


@pytest.mark.parametrize("mode", ["sorted", "reverse", "alone"])
def test_every_module_imports_in_any_order(mode):
    modules = package_modules()
    order = modules[::-1] if mode == "reverse" else modules
    failures = run_order(order, mode)
    assert not failures, "imports that fail:\n" + "\n".join(failures)


def test_the_checker_reports_a_cycle(tmp_path):
    """The subprocess check itself: two modules importing a name from each other fail when the
    second is imported first, and the report names the module and the error."""
    pkg = tmp_path / "cyc"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from cyc.b import B\nA = 1\n")
    (pkg / "b.py").write_text("from cyc.a import A\nB = 2\n")
    script = _SCRIPT.replace('k == "facemtl" or k.startswith("facemtl.")', 'k == "cyc" or k.startswith("cyc.")')
    proc = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n" + script,
                           json.dumps(["cyc.a", "cyc.b"]), "alone"], capture_output=True, text=True, timeout=180)  # fmt: skip
    failures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(failures) == 2 and failures[0].startswith("cyc.a (imported first): ImportError")
    assert "partially initialized module" in failures[0]
