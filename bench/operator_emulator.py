"""The Kubernetes API emulator (tests/kube_emulator.py) served alone in its own process.

``bench/operator.py`` starts it so that neither the operator nor the benchmark's driver shares
its event loop or its GIL. It prints its URL on one line and serves until stdin closes; given a
file name, it runs under cProfile and writes the profile there at the end.

    PYTHONPATH=. .venv/bin/python bench/operator_emulator.py [PROFILE]
"""

from __future__ import annotations

import asyncio
import cProfile
import sys

import kmock

from tests.kube_emulator import KubeEmulator


async def serve() -> None:
    emulator = KubeEmulator()
    async with emulator, kmock.Server(emulator) as server:
        print(str(server.url).rstrip("/"), flush=True)
        await asyncio.to_thread(sys.stdin.read)  # until the benchmark closes our stdin
        emulator.close_watches()


if __name__ == "__main__":
    if len(sys.argv) > 1:
        cProfile.run("asyncio.run(serve())", sys.argv[1])
    else:
        asyncio.run(serve())
