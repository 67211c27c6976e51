"""The runtime stands alone: engine/ imports nothing from training/, convert/ or bench/, has no
import circle, and verifying faces never imports torch, onnx or plotting."""
from __future__ import annotations

import ast
import json
import os
import shutil
import socket
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, face_data_dir, write_jpeg

UPPER = ("training", "convert", "bench")


def _engine_imports() -> dict[str, set[str]]:
    """Every import (module level or inside a function) of each engine module, as dotted names."""
    graph = {}
    for path in sorted((REPO / "engine").rglob("*.py")):
        rel = path.relative_to(REPO).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found |= {f"{node.module}.{a.name}" for a in node.names}
        graph[name] = found
    return graph


def test_engine_imports_nothing_from_the_layers_above():
    bad = {mod: sorted(i for i in imports if i.split(".")[0] in UPPER)
           for mod, imports in _engine_imports().items()}
    assert not {m: i for m, i in bad.items() if i}, "engine/ must not import training/, convert/ or bench/"


def test_no_import_circle_inside_engine():
    graph = _engine_imports()
    edges = {m: {i for i in imports if i in graph and i != m} for m, imports in graph.items()}
    # A package importing its own submodules (engine.backends -> engine.backends.base) is not a circle.
    edges = {m: {i for i in deps if not i.startswith(m + ".")} for m, deps in edges.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert not cycles, f"import circles in engine/: {cycles}"


def test_verifying_two_photos_never_imports_torch_onnx_or_plotting(tmp_path, face_data):
    """Cold (empty cache) and warm: the runtime path imports none of the training, conversion or report stacks."""
    lfw = face_data / "lfw-deepfunneled" / "Aaron_Peirsol"
    a, b = sorted(lfw.iterdir())[:2]
    # the CLI leaves through os._exit, so the check runs as an atexit handler, which it still calls
    code = ("import atexit, runpy, sys\n"
            f"sys.argv = ['engine.verify', {str(a)!r}, {str(b)!r}, '--backend', sys.argv[1]]\n"
            "heavy = ('torch', 'onnx', 'matplotlib', 'scipy', 'training', 'convert')\n"
            "atexit.register(lambda: print('imported:', [m for m in heavy if m in sys.modules]))\n"
            "runpy.run_module('engine.verify', run_name='__main__')\n")
    backends = ["onnxruntime"] + (["openvino"] if __import__("importlib").util.find_spec("openvino") else [])
    env = {**os.environ, "FAKEAWARE_CACHE_DIR": str(tmp_path / "cache")}
    for backend in backends:
        for call in ("cold", "warm"):
            out = subprocess.run([sys.executable, "-c", code, backend], capture_output=True, text=True, cwd=REPO,
                                 env=env, timeout=300)
            assert out.returncode == 0, (backend, call, out.stdout, out.stderr[-2000:])
            assert out.stdout.strip().splitlines()[-1] == "imported: []", (backend, call, out.stdout)


def _index_reachable(host="pypi.org", port=443) -> bool:
    try:
        socket.create_connection((host, port), timeout=3).close()
        return True
    except OSError:
        return False


@pytest.mark.slow
def test_base_install_in_a_fresh_venv_verifies_without_torch(tmp_path):
    """The README's main command on a machine with nothing installed: no torch comes with it."""
    if not _index_reachable():
        pytest.skip("the package index (pypi.org) is unreachable from here")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / ("Scripts" if os.name == "nt" else "bin") / "python"
    # Install from a copy: a build inside the checkout would leave build/ and *.egg-info behind.
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", "runs", "build", "*.egg-info", "__pycache__",
                                                              ".pytest_cache", ".benchmarks", "data"))
    install = subprocess.run([str(py), "-m", "pip", "install", "-q", str(src)], capture_output=True, text=True,
                             timeout=900)
    assert install.returncode == 0, install.stderr[-3000:]
    listed = subprocess.run([str(py), "-m", "pip", "list"], capture_output=True, text=True).stdout.lower()
    names = {line.split()[0] for line in listed.splitlines()[2:] if line.strip()}
    assert not names & {"torch", "onnx", "ml-dtypes"} and not any(n.startswith("nvidia") for n in names), names
    rng = np.random.default_rng(0)
    for name in ("a.jpg", "b.jpg"):
        write_jpeg(tmp_path / name, rng.integers(0, 256, (120, 100, 3), dtype=np.uint8))
    out = subprocess.run([str(py), "-m", "engine.verify", str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg"), "--json"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    # noise has no face: a clean "no face found" error (exit 2) from the bundled model, run without torch
    assert out.returncode == 2 and "no face found" in out.stdout + out.stderr, (out.stdout, out.stderr[-2000:])
    lfw = face_data_dir() / "lfw-deepfunneled" / "Aaron_Peirsol"
    if lfw.is_dir():  # and two photos of one person: a decision
        a, b = sorted(lfw.iterdir())[:2]
        out = subprocess.run([str(py), "-m", "engine.verify", str(a), str(b), "--json"], capture_output=True,
                             text=True, cwd=tmp_path, timeout=300)
        assert out.returncode == 0 and json.loads(out.stdout)["match"] is True, (out.stdout, out.stderr[-2000:])
