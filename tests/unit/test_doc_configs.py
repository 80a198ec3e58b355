"""Every configuration example in the docs is one the server or the agent accepts.

A ```yaml block with a ``trust_domain`` in docs/agent.md, docs/standalone.md or
docs/server-cli.md is read as an agent configuration when it names a ``server_address`` and as
a server configuration otherwise, with the same checks `run` applies.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from herald_agent.config import config_from_mapping as agent_config
from herald_server.config import config_from_mapping as server_config

ROOT = Path(__file__).resolve().parents[2]
DOCS = ("agent.md", "standalone.md", "server-cli.md")


def _examples() -> list[tuple[str, int, dict[str, Any]]]:
    found = []
    for name in DOCS:
        text = (ROOT / "docs" / name).read_text()
        for match in re.finditer(r"^```yaml\n(.*?)^```$", text, flags=re.M | re.S):
            doc = yaml.safe_load(match.group(1))
            if isinstance(doc, dict) and "trust_domain" in doc:
                found.append((name, text.count("\n", 0, match.start()) + 1, doc))
    return found


EXAMPLES = _examples()


def test_the_docs_have_agent_and_server_examples() -> None:
    kinds = {"server_address" in doc for _, _, doc in EXAMPLES}
    assert kinds == {True, False}, EXAMPLES


@pytest.mark.parametrize(
    ("doc", "line", "example"), EXAMPLES, ids=[f"{d}:{n}" for d, n, _ in EXAMPLES]
)
def test_a_documented_configuration_is_accepted(
    doc: str, line: int, example: dict[str, Any], tmp_path: Path
) -> None:
    if "server_address" in example:
        config: Any = agent_config(example, base_dir=tmp_path)
    else:
        namespace = tmp_path / "namespace"
        namespace.write_text("herald")
        config = server_config(example, base_dir=tmp_path, namespace_file=namespace)
    assert str(config.trust_domain) == example["trust_domain"]
