"""The two systems the interop tests and `bench/vs_spire.py` run side by side, made by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.interop.golang import missing_prerequisite
from tests.interop.herald_standalone import HeraldStandalone
from tests.interop.spire_standalone import SpireStandalone, spire_binaries
from tests.interop.standalone import Standalone

System = Standalone
NAMES = ("herald", "spire")


def make_system(name: str, workdir: Path, socket_dir: Path, **spire_options: Any) -> System:
    """herald, or SPIRE from scripts/build_spire.sh's cache (skipped, or failed under CI, if the
    cache has no binaries: `make spire` builds them); ``spire_options`` go to SpireStandalone."""
    if name == "herald":
        return HeraldStandalone(workdir, socket_dir)
    bin_dir = spire_binaries()
    if bin_dir is None:
        missing_prerequisite("SPIRE is not built: run `make spire` (scripts/build_spire.sh)")
    assert bin_dir is not None
    return SpireStandalone(workdir, socket_dir, bin_dir, **spire_options)
