"""JSON read strictly, for documents whose meaning must not depend on which parser reads them.

Two members with one name, or NaN/Infinity, could be read differently by another parser (a
classic route to validator confusion), so both are refused.
"""

from __future__ import annotations

import json
from typing import Any, NoReturn


class DuplicateMemberError(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(f"duplicate member {name[:64]!r}")
        self.name = name


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, value in pairs:
        if name in result:
            raise DuplicateMemberError(name)
        result[name] = value
    return result


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def loads(text: str | bytes) -> Any:
    """json.loads, refusing duplicate members and NaN/Infinity with a ValueError.

    Raises RecursionError for absurdly nested input, like json.loads; callers catch both.
    """
    return json.loads(text, object_pairs_hook=_unique_members, parse_constant=_no_constant)
