"""The agent SVID kept in data_dir: round trip, file modes, and every unusable file ignored."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from herald_agent.server_client import AgentSvid, Attested
from herald_agent.svid_store import STATE_FILE, SvidStore
from herald_core.bundle import Bundle
from herald_core.clock import FakeClock
from herald_core.keys import generate_key, private_key_to_pem
from herald_core.spiffeid import SpiffeId, TrustDomain
from herald_core.x509svid import make_ca_certificate, make_leaf_certificate

TD = TrustDomain.parse("example.org")
NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)
AGENT_ID = SpiffeId.parse("spiffe://example.org/herald/agent/join_token/abc")


def attested(lifetime: dt.timedelta = dt.timedelta(hours=1)) -> Attested:
    ca_key, key = generate_key(), generate_key()
    ca = make_ca_certificate(
        ca_key, TD, not_before=NOW - dt.timedelta(hours=1), not_after=NOW + dt.timedelta(days=1)
    )
    leaf = make_leaf_certificate(
        key.public_key(),
        AGENT_ID,
        issuer_cert=ca,
        issuer_key=ca_key,
        not_before=NOW - dt.timedelta(seconds=10),
        not_after=NOW + lifetime,
    )
    svid = AgentSvid(AGENT_ID, key, (leaf,), NOW, jitter=0.05)
    return Attested(svid, Bundle(TD, (ca,), refresh_hint=300, sequence_number=4))


def store(data_dir: Path, now: dt.datetime = NOW, td: TrustDomain = TD) -> SvidStore:
    return SvidStore(data_dir, td, clock=FakeClock(now))


def reasons(caplog: pytest.LogCaptureFixture) -> str:
    """The ``reason`` fields of the records logged, and their messages."""
    return " | ".join(
        f"{r.getMessage()}: {getattr(r, 'fields', {}).get('reason', '')}" for r in caplog.records
    )


def test_round_trip_keeps_svid_key_bundle_and_renewal_time(tmp_path: Path) -> None:
    data_dir = tmp_path / "agent"
    saved = attested()
    store(data_dir).save(saved)
    assert (data_dir.stat().st_mode & 0o777) == 0o700
    assert ((data_dir / STATE_FILE).stat().st_mode & 0o777) == 0o600
    assert [p.name for p in data_dir.iterdir()] == [STATE_FILE]
    loaded = store(data_dir).load()
    assert loaded is not None
    assert loaded.svid.spiffe_id == AGENT_ID
    assert loaded.svid.chain == saved.svid.chain
    assert private_key_to_pem(loaded.svid.key) == private_key_to_pem(saved.svid.key)
    assert loaded.svid.renew_at == saved.svid.renew_at
    assert loaded.bundle == saved.bundle


def test_a_second_save_replaces_the_first(tmp_path: Path) -> None:
    first, second = attested(), attested()
    store(tmp_path).save(first)
    store(tmp_path).save(second)
    loaded = store(tmp_path).load()
    assert loaded is not None and loaded.svid.chain == second.svid.chain


def test_nothing_stored_is_none_without_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert store(tmp_path).load() is None
    assert not caplog.records


def _mismatched_key(path: Path) -> None:
    good = attested()
    svid = good.svid
    wrong = AgentSvid(svid.spiffe_id, generate_key(), svid.chain, svid.received_at)
    SvidStore(path.parent, TD).save(Attested(wrong, good.bundle))


def _directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        (lambda path: path.write_text("{not json"), "cannot parse it"),
        (lambda path: path.write_text('{"version": 9}'), "unknown format version 9"),
        (lambda path: path.write_text('{"version": 1}'), "cannot parse it: KeyError"),
        (_directory, "cannot read it"),
        (_mismatched_key, "its key does not match its certificate"),
    ],
)
def test_an_unusable_file_is_ignored_with_the_reason(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    spoil: Callable[[Path], object],
    reason: str,
) -> None:
    store(tmp_path).save(attested())
    spoil(tmp_path / STATE_FILE)
    with caplog.at_level(logging.WARNING):
        assert store(tmp_path).load() is None
    assert reason in reasons(caplog)
    assert "attesting afresh" in reasons(caplog)


def test_expired_or_foreign_svid_is_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store(tmp_path).save(attested(lifetime=dt.timedelta(minutes=5)))
    with caplog.at_level(logging.WARNING):
        assert store(tmp_path, now=NOW + dt.timedelta(minutes=5)).load() is None
        assert "it expired at 2026-11-28T12:05:00+00:00" in reasons(caplog)
        assert store(tmp_path, td=TrustDomain.parse("other.org")).load() is None
        assert "it is for trust domain example.org, not other.org" in reasons(caplog)
    assert store(tmp_path).load() is not None
