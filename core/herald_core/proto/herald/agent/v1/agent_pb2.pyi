from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Selector(_message.Message):
    __slots__ = ("type", "value")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    type: str
    value: str
    def __init__(self, type: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class Entry(_message.Message):
    __slots__ = ("id", "spiffe_id", "parent_id", "selectors", "x509_svid_ttl", "jwt_svid_ttl", "dns_names", "federates_with", "hint", "admin", "downstream", "revision", "created_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_ID_FIELD_NUMBER: _ClassVar[int]
    SELECTORS_FIELD_NUMBER: _ClassVar[int]
    X509_SVID_TTL_FIELD_NUMBER: _ClassVar[int]
    JWT_SVID_TTL_FIELD_NUMBER: _ClassVar[int]
    DNS_NAMES_FIELD_NUMBER: _ClassVar[int]
    FEDERATES_WITH_FIELD_NUMBER: _ClassVar[int]
    HINT_FIELD_NUMBER: _ClassVar[int]
    ADMIN_FIELD_NUMBER: _ClassVar[int]
    DOWNSTREAM_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    spiffe_id: str
    parent_id: str
    selectors: _containers.RepeatedCompositeFieldContainer[Selector]
    x509_svid_ttl: int
    jwt_svid_ttl: int
    dns_names: _containers.RepeatedScalarFieldContainer[str]
    federates_with: _containers.RepeatedScalarFieldContainer[str]
    hint: str
    admin: bool
    downstream: bool
    revision: int
    created_at: int
    def __init__(self, id: _Optional[str] = ..., spiffe_id: _Optional[str] = ..., parent_id: _Optional[str] = ..., selectors: _Optional[_Iterable[_Union[Selector, _Mapping]]] = ..., x509_svid_ttl: _Optional[int] = ..., jwt_svid_ttl: _Optional[int] = ..., dns_names: _Optional[_Iterable[str]] = ..., federates_with: _Optional[_Iterable[str]] = ..., hint: _Optional[str] = ..., admin: _Optional[bool] = ..., downstream: _Optional[bool] = ..., revision: _Optional[int] = ..., created_at: _Optional[int] = ...) -> None: ...

class Bundle(_message.Message):
    __slots__ = ("trust_domain", "x509_authorities", "jwt_authorities", "refresh_hint", "sequence_number")
    TRUST_DOMAIN_FIELD_NUMBER: _ClassVar[int]
    X509_AUTHORITIES_FIELD_NUMBER: _ClassVar[int]
    JWT_AUTHORITIES_FIELD_NUMBER: _ClassVar[int]
    REFRESH_HINT_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    trust_domain: str
    x509_authorities: _containers.RepeatedScalarFieldContainer[bytes]
    jwt_authorities: _containers.RepeatedCompositeFieldContainer[JWTKey]
    refresh_hint: int
    sequence_number: int
    def __init__(self, trust_domain: _Optional[str] = ..., x509_authorities: _Optional[_Iterable[bytes]] = ..., jwt_authorities: _Optional[_Iterable[_Union[JWTKey, _Mapping]]] = ..., refresh_hint: _Optional[int] = ..., sequence_number: _Optional[int] = ...) -> None: ...

class JWTKey(_message.Message):
    __slots__ = ("key_id", "public_key", "expires_at")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    public_key: bytes
    expires_at: int
    def __init__(self, key_id: _Optional[str] = ..., public_key: _Optional[bytes] = ..., expires_at: _Optional[int] = ...) -> None: ...

class Status(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class AgentSVID(_message.Message):
    __slots__ = ("spiffe_id", "cert_chain", "expires_at")
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    CERT_CHAIN_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    spiffe_id: str
    cert_chain: _containers.RepeatedScalarFieldContainer[bytes]
    expires_at: int
    def __init__(self, spiffe_id: _Optional[str] = ..., cert_chain: _Optional[_Iterable[bytes]] = ..., expires_at: _Optional[int] = ...) -> None: ...

class JoinTokenParams(_message.Message):
    __slots__ = ("token",)
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: str
    def __init__(self, token: _Optional[str] = ...) -> None: ...

class K8sPsatParams(_message.Message):
    __slots__ = ("cluster", "token")
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    cluster: str
    token: str
    def __init__(self, cluster: _Optional[str] = ..., token: _Optional[str] = ...) -> None: ...

class AttestAgentRequest(_message.Message):
    __slots__ = ("join_token", "k8s_psat", "csr")
    JOIN_TOKEN_FIELD_NUMBER: _ClassVar[int]
    K8S_PSAT_FIELD_NUMBER: _ClassVar[int]
    CSR_FIELD_NUMBER: _ClassVar[int]
    join_token: JoinTokenParams
    k8s_psat: K8sPsatParams
    csr: bytes
    def __init__(self, join_token: _Optional[_Union[JoinTokenParams, _Mapping]] = ..., k8s_psat: _Optional[_Union[K8sPsatParams, _Mapping]] = ..., csr: _Optional[bytes] = ...) -> None: ...

class AttestAgentResponse(_message.Message):
    __slots__ = ("svid", "bundle")
    SVID_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    svid: AgentSVID
    bundle: Bundle
    def __init__(self, svid: _Optional[_Union[AgentSVID, _Mapping]] = ..., bundle: _Optional[_Union[Bundle, _Mapping]] = ...) -> None: ...

class RenewAgentRequest(_message.Message):
    __slots__ = ("csr",)
    CSR_FIELD_NUMBER: _ClassVar[int]
    csr: bytes
    def __init__(self, csr: _Optional[bytes] = ...) -> None: ...

class RenewAgentResponse(_message.Message):
    __slots__ = ("svid",)
    SVID_FIELD_NUMBER: _ClassVar[int]
    svid: AgentSVID
    def __init__(self, svid: _Optional[_Union[AgentSVID, _Mapping]] = ...) -> None: ...

class SyncEntriesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SyncEntriesResponse(_message.Message):
    __slots__ = ("full", "entries", "removed_entry_ids", "bundle", "federated_bundles")
    FULL_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    REMOVED_ENTRY_IDS_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    FEDERATED_BUNDLES_FIELD_NUMBER: _ClassVar[int]
    full: bool
    entries: _containers.RepeatedCompositeFieldContainer[Entry]
    removed_entry_ids: _containers.RepeatedScalarFieldContainer[str]
    bundle: Bundle
    federated_bundles: _containers.RepeatedCompositeFieldContainer[Bundle]
    def __init__(self, full: _Optional[bool] = ..., entries: _Optional[_Iterable[_Union[Entry, _Mapping]]] = ..., removed_entry_ids: _Optional[_Iterable[str]] = ..., bundle: _Optional[_Union[Bundle, _Mapping]] = ..., federated_bundles: _Optional[_Iterable[_Union[Bundle, _Mapping]]] = ...) -> None: ...

class X509SVIDParams(_message.Message):
    __slots__ = ("entry_id", "csr")
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    CSR_FIELD_NUMBER: _ClassVar[int]
    entry_id: str
    csr: bytes
    def __init__(self, entry_id: _Optional[str] = ..., csr: _Optional[bytes] = ...) -> None: ...

class BatchSignX509SVIDRequest(_message.Message):
    __slots__ = ("params",)
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    params: _containers.RepeatedCompositeFieldContainer[X509SVIDParams]
    def __init__(self, params: _Optional[_Iterable[_Union[X509SVIDParams, _Mapping]]] = ...) -> None: ...

class X509SVIDResult(_message.Message):
    __slots__ = ("entry_id", "status", "cert_chain", "expires_at")
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CERT_CHAIN_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    entry_id: str
    status: Status
    cert_chain: _containers.RepeatedScalarFieldContainer[bytes]
    expires_at: int
    def __init__(self, entry_id: _Optional[str] = ..., status: _Optional[_Union[Status, _Mapping]] = ..., cert_chain: _Optional[_Iterable[bytes]] = ..., expires_at: _Optional[int] = ...) -> None: ...

class BatchSignX509SVIDResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[X509SVIDResult]
    def __init__(self, results: _Optional[_Iterable[_Union[X509SVIDResult, _Mapping]]] = ...) -> None: ...

class SignJWTSVIDRequest(_message.Message):
    __slots__ = ("entry_id", "audience", "ttl_seconds")
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    entry_id: str
    audience: _containers.RepeatedScalarFieldContainer[str]
    ttl_seconds: int
    def __init__(self, entry_id: _Optional[str] = ..., audience: _Optional[_Iterable[str]] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...

class SignJWTSVIDResponse(_message.Message):
    __slots__ = ("token", "spiffe_id", "expires_at", "issued_at")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_FIELD_NUMBER: _ClassVar[int]
    token: str
    spiffe_id: str
    expires_at: int
    issued_at: int
    def __init__(self, token: _Optional[str] = ..., spiffe_id: _Optional[str] = ..., expires_at: _Optional[int] = ..., issued_at: _Optional[int] = ...) -> None: ...

class GetBundleRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetBundleResponse(_message.Message):
    __slots__ = ("bundle",)
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    bundle: Bundle
    def __init__(self, bundle: _Optional[_Union[Bundle, _Mapping]] = ...) -> None: ...
