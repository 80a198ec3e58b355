"""The built wheel carries every package, the generated protos and working console scripts."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["herald_core", "herald_server", "herald_agent", "herald_operator"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = out.glob("herald-*.whl")
    return built


def test_wheel_contents(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in PACKAGES:
        assert f"{package}/__init__.py" in names
        assert f"{package}/py.typed" in names
    assert "herald_core/proto/spiffe/workload/workload_pb2.py" in names
    assert "herald_core/proto/spiffe/workload/workload_pb2.pyi" in names
    assert "herald_core/proto/herald/agent/v1/agent_pb2_grpc.py" in names
    assert not any(name.startswith(("tests/", "operator/", "bench/")) for name in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    for script in ("herald-server", "herald-agent", "herald-operator"):
        assert f"{script} = " in text


def test_installed_wheel_imports_every_package(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    code = (
        "import importlib, sys\n"
        f"mods = {[*PACKAGES, 'herald_core.proto.spiffe.workload.workload_pb2']!r}\n"
        "for m in mods + ['herald_server.cli', 'herald_agent.cli', 'herald_operator.cli']:\n"
        "    mod = importlib.import_module(m)\n"
        f"    assert mod.__file__.startswith({str(target)!r}), (m, mod.__file__)\n"
        "import operator; assert operator.__file__.startswith(sys.base_prefix), operator.__file__\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.parametrize("script", ["herald-server", "herald-agent", "herald-operator"])
def test_console_scripts_print_help(script: str) -> None:
    exe = Path(sys.executable).parent / script
    result = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert f"Usage: {script}" in result.stdout
