"""java-spiffe-core 0.8.17 against herald, and against SPIRE: tests/interop/java as a process.

Maven resolves java-spiffe-core and its gRPC transport (tests/interop/java/pom.xml) into the local
repository; `JavaSpiffeCheck.java` runs as a single source file under the JDK's `java`, which the
entry selects by its path with a 10 s X.509-SVID TTL: X509Source's SVID, bundle and chain, a
rotation, JWT-SVIDs with three audiences from the client and from a JwtSource, validation locally
and by the agent. The test fails unless every check printed PASS. Without a JDK or Maven it
skips, or fails under CI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop.golang import INTEROP, missing_prerequisite
from tests.interop.systems import NAMES, make_system

pytestmark = pytest.mark.timeout(300)

JAVA = INTEROP / "java"
CHECKS = (
    "x509source-svid",
    "x509source-rotation",
    "jwt-fetch-several-audiences",
    "jwtsource-fetch-and-local-validation",
    "validate-by-the-agent",
    "validate-refuses-another-audience",
)
ROTATING_TTL = 10


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        missing_prerequisite(f"`{name}` is not on PATH (java-spiffe needs a JDK and Maven)")
    assert found is not None
    return found


@pytest.fixture(scope="module")
def classpath(tmp_path_factory: pytest.TempPathFactory) -> str:
    """java-spiffe-core's runtime classpath, resolved by Maven from the committed pom."""
    output = tmp_path_factory.mktemp("java") / "classpath.txt"
    done = subprocess.run(
        [
            tool("mvn"),
            "-B",
            "-q",
            "-f",
            str(JAVA / "pom.xml"),
            "dependency:build-classpath",
            "-Dmdep.includeScope=runtime",
            f"-Dmdep.outputFile={output}",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"resolving java-spiffe-core failed:\n{done.stdout}{done.stderr}")
    return output.read_text().strip()


@pytest.fixture(scope="module", params=NAMES)
def deployment_and_id(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    java = os.path.realpath(tool("java"))
    with tempfile.TemporaryDirectory(prefix="herald-java-") as sockets:
        deployment = make_system(
            request.param, tmp_path_factory.mktemp(request.param), Path(sockets)
        )
        try:
            deployment.start()
            java_id = deployment.create_entry(
                "/interop/java", [f"unix:path:{java}"], x509_ttl=ROTATING_TTL
            )
            deployment.wait_svids(1)
            yield deployment.endpoint, java_id
        finally:
            deployment.stop()


def test_java_spiffe_core(classpath: str, deployment_and_id: tuple[str, str]) -> None:
    endpoint, java_id = deployment_and_id
    done = subprocess.run(
        [tool("java"), "-cp", classpath, str(JAVA / "JavaSpiffeCheck.java")],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "SPIFFE_ENDPOINT_SOCKET": endpoint, "HERALD_INTEROP_JAVA_ID": java_id},
        check=False,
    )
    report = f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr[-4000:]}"
    passed = {
        line.split()[1].rstrip(":") for line in done.stdout.splitlines() if line.startswith("PASS ")
    }
    assert done.returncode == 0 and passed == set(CHECKS), report
