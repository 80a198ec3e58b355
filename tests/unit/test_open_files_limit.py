"""herald-agent raises its soft open-files limit to the hard one at start, as Go programs do."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = """
import json, resource
from herald_agent.agent import raise_open_files_limit
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
raised = raise_open_files_limit()
now = resource.getrlimit(resource.RLIMIT_NOFILE)
print(json.dumps({"raised": raised, "now": now, "hard": hard}))
"""


def test_the_soft_limit_is_raised_to_the_hard_limit() -> None:
    # A child process: the limit is the process's, and the test runner's must stay as it was.
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=True
    )
    result = json.loads(done.stdout)
    assert result["raised"] == result["hard"]
    assert result["now"] == [result["hard"], result["hard"]]
