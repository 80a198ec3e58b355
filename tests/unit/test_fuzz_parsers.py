"""Fuzzing herald's parsers of outside input: each either accepts or raises its own error.

Every parser here reads text or bytes that come from outside the process (flags, files, custom
resources, /proc, tokens). Property-based fuzzing with inputs shaped like the real ones (the
alphabets and pieces the formats use, so that inputs get past the first check) and with
arbitrary ones: nothing may raise anything but the parser's documented error, and what is
accepted must satisfy the format's rules. Bounded by ``tests/fuzzing.py`` (HERALD_FUZZ_EXAMPLES).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import string
from pathlib import Path
from typing import Any

import yaml
from hypothesis import given
from hypothesis import strategies as st

from herald_agent.attestors.cgroups import parse_cgroup_file
from herald_agent.config import config_from_mapping as agent_config
from herald_core.bundle import Bundle
from herald_core.configfile import ConfigError, read_yaml_file
from herald_core.durations import LONGEST, DurationError, parse_duration
from herald_core.jwtsvid import JwtSvid, JwtSvidError, mint_jwt_svid, validate_jwt_svid
from herald_core.keys import generate_key
from herald_core.selector import Selector, SelectorError
from herald_core.spiffeid import SpiffeId, SpiffeIdError, TrustDomain
from herald_operator.templates import TemplateContext, TemplateError, compile_template, render
from herald_server.config import config_from_mapping as server_config
from tests.fuzzing import fuzz

NOW = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
NO_POD = Path("/nonexistent/namespace")

# SPIFFE IDs: the characters that matter to the rules, upper case included.
ID_CHARS = string.ascii_letters + string.digits + ".-_/:@%?#" + "\u00e4 "
spiffe_like = st.one_of(
    st.text(),
    st.builds(
        lambda scheme, rest: scheme + rest,
        st.sampled_from(["spiffe://", "SPIFFE://", "spiffe:/", "http://", ""]),
        st.text(ID_CHARS, max_size=80),
    ),
)


@fuzz
@given(spiffe_like)
def test_spiffe_ids_are_accepted_only_in_canonical_form(text: str) -> None:
    try:
        parsed = SpiffeId.parse(text)
    except SpiffeIdError:
        return
    assert str(parsed) == text
    assert SpiffeId.parse(str(parsed)) == parsed
    assert parsed.trust_domain.name == parsed.trust_domain.name.lower()
    assert not any(part in ("", ".", "..") for part in parsed.path.split("/")[1:])


@fuzz
@given(spiffe_like)
def test_trust_domains_parse_or_refuse(text: str) -> None:
    with contextlib.suppress(SpiffeIdError):
        assert TrustDomain.parse(TrustDomain.parse(text).name).name == TrustDomain.parse(text).name


SELECTOR_PIECES = st.sampled_from(
    ["unix", "k8s", "uid", "gid", "sha256", "path", "ns", "pod-label", "pod-image-count", ":"]
)
selector_like = st.one_of(
    st.text(max_size=60),
    st.lists(st.one_of(SELECTOR_PIECES, st.text(string.printable, max_size=12)), max_size=6).map(
        "".join
    ),
    st.builds(
        lambda key, value: f"unix:{key}:{value}",
        st.sampled_from(["uid", "gid", "supplementary_gid", "sha256", "path", "user"]),
        st.one_of(st.integers(-5, 2**33).map(str), st.text(string.hexdigits + "/-+", max_size=70)),
    ),
)


@fuzz
@given(selector_like)
def test_selectors_parse_or_refuse_and_round_trip(text: str) -> None:
    try:
        selector = Selector.parse(text)
    except SelectorError:
        return
    assert str(selector) == text
    assert Selector.parse(str(selector)) == selector
    rest = selector.value.partition(":")[2]
    if selector.type == "unix" and selector.key in ("uid", "gid", "supplementary_gid"):
        assert 0 <= int(rest) <= 4294967294 and str(int(rest)) == rest
    if selector.type == "unix" and selector.key == "sha256":
        assert len(rest) == 64 and set(rest) <= set("0123456789abcdef")


duration_like = st.one_of(
    st.text(max_size=40),
    st.lists(
        st.tuples(
            st.one_of(st.integers(0, 10**25).map(str), st.decimals(0, 10**6, places=3).map(str)),
            st.sampled_from(["ms", "s", "m", "h", "d", "", "x", "µs"]),
        ),
        max_size=4,
    ).map(lambda parts: "".join(n + u for n, u in parts)),
)


@fuzz
@given(duration_like)
def test_durations_parse_to_a_bounded_value_or_refuse(text: str) -> None:
    try:
        found = parse_duration(text)
    except DurationError as exc:
        error = str(exc)
    else:
        assert dt.timedelta(0) <= found <= LONGEST
        return
    assert len(error) < 300, "a huge value is quoted short"


# Config documents: the real fields, with values of every YAML type, at every depth.
yaml_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=True),
        st.text(max_size=30),
        st.sampled_from(["1h", "0s", "99999999999999999999", "127.0.0.1:0", "[::1]:1", "x:y:z"]),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=10), children, max_size=3)
    ),
    max_leaves=12,
)


def documents(fields: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Documents with any subset of ``fields`` (a nested dict gives a nested section)."""
    values = {
        name: documents(sub) | yaml_values if isinstance(sub, dict) else yaml_values
        for name, sub in fields.items()
    }
    return st.fixed_dictionaries({}, optional=values)


SERVER_FIELDS: dict[str, Any] = {
    "trust_domain": None,
    "mode": None,
    "data_dir": None,
    "attestation_address": None,
    "agent_address": None,
    "health_address": None,
    "admin_socket": None,
    "join_token_ttl": None,
    "server_dns_names": None,
    "ca": {"ttl": None, "x509_svid_ttl": None, "key_type": None, "upstream": {"dir": None}},
    "limits": {"max_batch": None, "sign_rate_per_agent": None, "signing_workers": None},
    "kubernetes": {"cluster_name": None, "agent_service_accounts": None},
}
AGENT_FIELDS: dict[str, Any] = {
    "trust_domain": None,
    "server_address": None,
    "trust_bundle_path": None,
    "node_attestor": {"join_token": {"token": None}, "k8s_psat": {"cluster": None}},
    "workload_attestors": {"unix": {"workload_size_limit": None}, "k8s": {"kubelet_host": None}},
    "workload_api": {"max_connections_per_uid": None, "idle_timeout": None},
    "health_address": None,
}


@fuzz
@given(documents(SERVER_FIELDS))
def test_server_config_documents_are_read_or_refused(doc: dict[str, Any]) -> None:
    with contextlib.suppress(ConfigError):
        server_config(doc, base_dir=Path("/etc/herald"), namespace_file=NO_POD)


@fuzz
@given(documents(AGENT_FIELDS))
def test_agent_config_documents_are_read_or_refused(doc: dict[str, Any]) -> None:
    with contextlib.suppress(ConfigError):
        agent_config(doc, base_dir=Path("/etc/herald"))


yaml_text = st.one_of(
    st.text(max_size=200),
    st.lists(
        st.sampled_from(
            ["a: 1", "a: 2", "  b: x", "- c", "&x {y: 1}", "<<: *x", "? [k]", "d: !!binary x", "\t"]
        ),
        max_size=8,
    ).map("\n".join),
    yaml_values.map(lambda v: yaml.safe_dump({"trust_domain": v})),
)


@fuzz
@given(yaml_text)
def test_config_files_are_read_or_refused(tmp_path_factory: Any, text: str) -> None:
    path = tmp_path_factory.mktemp("yaml") / "config.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    with contextlib.suppress(ConfigError):
        assert isinstance(read_yaml_file(path), dict)


CONTEXT = TemplateContext(
    trust_domain="example.org",
    cluster_name="prod",
    cluster_domain="cluster.local",
    pod_name="web-1",
    pod_namespace="shop",
    pod_uid="1234",
    service_account_name="web",
    node_name="node-a",
    node_uid=None,
    pod_labels={"app": "web", "": "empty"},
    pod_annotations={"k": "v"},
)
TEMPLATE_PIECES = st.sampled_from(
    [
        "{{",
        "}}",
        " ",
        ".",
        "TrustDomain",
        "PodMeta",
        "Name",
        "Labels",
        "NodeMeta",
        "UID",
        "index",
        '"app"',
        '"',
        "|",
        "(",
        ")",
        "spiffe://",
        "/ns/",
        "-",
        "{{-",
        "-}}",
    ]
)
template_like = st.one_of(st.text(max_size=60), st.lists(TEMPLATE_PIECES, max_size=12).map("".join))


@fuzz
@given(template_like)
def test_templates_compile_and_render_or_refuse(text: str) -> None:
    try:
        template = compile_template(text, "spiffeIDTemplate")
    except TemplateError:
        return
    assert template is not None
    with contextlib.suppress(TemplateError):
        assert isinstance(render(text, "spiffeIDTemplate", CONTEXT), str)


UID = "1234abcd-5678-90ab-cdef-1234567890ab"
CID = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0"
CGROUP_PIECES = st.sampled_from(
    [
        "kubepods",
        "kubepods.slice",
        "besteffort",
        "burstable",
        f"pod{UID}",
        f"kubepods-besteffort-pod{UID.replace('-', '_')}.slice",
        f"cri-containerd-{CID}.scope",
        f"docker-{CID}.scope",
        CID,
        "crio-conmon-x",
        "system.slice",
        "..",
        "",
        "pod",
    ]
)
cgroup_lines = st.builds(
    lambda hierarchy, controllers, segments: f"{hierarchy}:{controllers}:/" + "/".join(segments),
    st.sampled_from(["0", "1", "12", "x", ""]),
    st.sampled_from(["", "cpu,cpuacct", "pids", "name=systemd"]),
    st.lists(st.one_of(CGROUP_PIECES, st.text(max_size=8)), max_size=7),
)
cgroup_files = st.one_of(st.text(max_size=300), st.lists(cgroup_lines, max_size=6).map("\n".join))


@fuzz
@given(cgroup_files)
def test_cgroup_files_give_a_pod_they_name_or_none(text: str) -> None:
    found = parse_cgroup_file(text)
    if found is not None:
        assert found.pod_uid in text or found.pod_uid.replace("-", "_") in text
        assert found.container_id in text


KEY = generate_key()
TD = TrustDomain("example.org")
BUNDLE = Bundle(TD, jwt_authorities={"k1": KEY.public_key()})
TOKEN = mint_jwt_svid(
    key=KEY,
    key_id="k1",
    spiffe_id=SpiffeId.parse("spiffe://example.org/web"),
    audiences=["db"],
    issued_at=NOW,
    expires_at=NOW + dt.timedelta(minutes=5),
)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=False),
        st.text(max_size=20),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=10,
)
header_like = st.fixed_dictionaries(
    {}, optional={"alg": json_values | st.just("ES256"), "kid": json_values, "typ": json_values}
)
claims_like = st.fixed_dictionaries(
    {},
    optional={
        "sub": json_values | st.just("spiffe://example.org/web"),
        "aud": json_values | st.just(["db"]),
        "exp": json_values | st.just(int(NOW.timestamp()) + 60),
        "iat": json_values,
    },
)
token_like = st.one_of(
    st.text(max_size=100),
    st.builds(
        lambda h, c, sig: ".".join([b64(json.dumps(h).encode()), b64(json.dumps(c).encode()), sig]),
        header_like,
        claims_like,
        st.text(string.ascii_letters + string.digits + "-_", max_size=90),
    ),
    st.builds(
        lambda pos, char: TOKEN[:pos] + char + TOKEN[pos + 1 :],
        st.integers(0, len(TOKEN) - 1),
        st.sampled_from(list(string.ascii_letters + string.digits + "-_.=")),
    ),
)


@fuzz
@given(token_like)
def test_jwt_svids_parse_or_refuse_and_never_validate_when_tampered(token: str) -> None:
    with contextlib.suppress(JwtSvidError):
        JwtSvid.parse_insecure(token, ["db"], now=NOW)
    try:
        svid = validate_jwt_svid(token, {TD: BUNDLE}, "db", now=NOW)
    except JwtSvidError:
        return
    # Only the genuine token validates (a changed base64 padding bit decodes to the same bytes).
    genuine = validate_jwt_svid(TOKEN, {TD: BUNDLE}, "db", now=NOW)
    assert (svid.spiffe_id, dict(svid.claims)) == (genuine.spiffe_id, dict(genuine.claims))
