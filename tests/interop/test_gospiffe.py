"""go-spiffe v2 against herald, and the same tests against SPIRE: tests/interop/go as processes.

A real `herald-server run` and `herald-agent run` (standalone, join token, unix attestor) serve
the Workload API; the Go test binary is registered by its path with a 10 s X.509-SVID TTL (so it
rotates within a test) and the py-spiffe workload (`scripts/demo_workload.py`) by the
interpreter's path. Each pytest test runs one Go test and fails with its output unless it passed.
Every test runs once more against SPIRE configured the same way (tests/interop/systems.py), which
shows the Go tests ask nothing of herald that SPIRE does not do.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop.golang import INTEROP, GoTest, compile_tests, run_go_test
from tests.interop.systems import NAMES, System, make_system

pytestmark = pytest.mark.timeout(300)

ROOT = INTEROP.parents[1]
GO_ROTATING_TTL = 10


class Interop:
    """The deployment, the compiled Go tests and what they are told to expect."""

    def __init__(self, deployment: System, binary: Path, go_id: str, py_id: str) -> None:
        self.deployment = deployment
        self.binary = binary
        self.env = {
            "SPIFFE_ENDPOINT_SOCKET": deployment.endpoint,
            "HERALD_INTEROP_GO_ID": go_id,
            "HERALD_INTEROP_PY_ID": py_id,
            "HERALD_INTEROP_PYTHON": sys.executable,
            "HERALD_INTEROP_PY_WORKLOAD": str(ROOT / "scripts" / "demo_workload.py"),
        }


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_tests(INTEROP / "go", tmp_path_factory.mktemp("gospiffe") / "gospiffe.test")


@pytest.fixture(scope="module", params=NAMES)
def interop(
    request: pytest.FixtureRequest, binary: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Interop]:
    workdir = tmp_path_factory.mktemp(request.param)
    # The socket's path must fit a sockaddr_un; pytest's temporary paths can be long.
    with tempfile.TemporaryDirectory(prefix="herald-go-") as sockets:
        deployment = make_system(request.param, workdir, Path(sockets))
        try:
            deployment.start()
            go_id = deployment.create_entry(
                "/interop/go", [f"unix:path:{binary}"], x509_ttl=GO_ROTATING_TTL
            )
            python = os.path.realpath(sys.executable)
            py_id = deployment.create_entry("/interop/python", [f"unix:path:{python}"])
            deployment.wait_svids(2)
            yield Interop(deployment, binary, go_id, py_id)
        finally:
            deployment.stop()


@pytest.mark.parametrize(
    "go_test",
    [
        "TestX509SourceRotates",
        "TestJWTSVIDsWithSeveralAudiences",
        "TestSpiffeTLSGoServesPython",
        "TestSpiffeTLSGoDialsPython",
        "TestSpiffeGRPCCredentials",
    ],
)
def test_gospiffe(interop: Interop, go_test: str) -> None:
    run_go_test(interop.binary, go_test, interop.env)


def test_gospiffe_watcher_outlives_an_agent_restart(interop: Interop, tmp_path: Path) -> None:
    signal = tmp_path / "watching"
    test = GoTest(
        interop.binary,
        "TestWatcherOutlivesAgentRestart",
        {**interop.env, "HERALD_INTEROP_SIGNAL": str(signal)},
    )
    deadline = time.monotonic() + 60
    while not signal.exists() and test.running() and time.monotonic() < deadline:
        time.sleep(0.05)
    if signal.exists():
        interop.deployment.restart_agent()
    test.finish().require_pass()
