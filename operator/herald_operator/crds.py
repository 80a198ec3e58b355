"""herald's CustomResourceDefinitions, read from the Helm chart, and validation against them.

The CRD YAML in ``deploy/helm/herald/files/crds/`` is the single source of every kind's schema:
the chart renders it (templates/crds.yaml, so ``helm upgrade`` upgrades the CRDs), and this module
loads the same files so tests (and tools) can check objects the way the API server will, without
a cluster. ``load_crds()`` takes the directory; by default it is the chart's ``files/crds/``
folder in the source tree. A wheel does not carry the chart: there, pass the ``files/crds/``
folder of the chart you install (``helm pull herald --untar``).

``validate(kind, obj)`` applies the CRD's ``openAPIV3Schema`` with jsonschema, translating the
Kubernetes extensions the API server would apply:

- objects with ``properties`` reject unknown fields (the API server's strict field validation,
  which kubectl uses by default), unless ``x-kubernetes-preserve-unknown-fields`` is set;
- ``x-kubernetes-int-or-string`` is the ``anyOf`` of integer and string the CRD already spells out;
- ``x-kubernetes-list-type: set`` means no duplicate items, ``map`` no two items with the same keys;
- ``x-kubernetes-validations`` (CEL): every rule herald's CRDs use has a Python twin in
  ``_CEL_RULES``, keyed by the rule's exact text; loading a CRD with a rule that has no twin fails,
  so the two cannot drift apart silently.

Other ``x-kubernetes-*`` keywords only affect storage or merging and are ignored. ``metadata`` is
checked for a name only: ObjectMeta is validated by the API server itself.

Loading needs only PyYAML; validating needs jsonschema, which is in the ``test`` extra (the
running operator relies on the API server, which enforces the same schema), so it is imported
only when a validator is first built.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

GROUP: Final = "herald.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KINDS: Final = (
    "ClusterSPIFFEID",
    "SPIFFEID",
    "ClusterStaticEntry",
    "ClusterFederatedTrustDomain",
    "WorkloadEntry",
)
# operator/herald_operator/crds.py → the repository root is two folders up.
SOURCE_CRD_DIR: Final = (
    Path(__file__).resolve().parents[2] / "deploy" / "helm" / "herald" / "files" / "crds"
)

Obj = Mapping[str, Any]


def _label_requirement_values(req: Obj) -> bool:
    has_values = bool(req.get("values"))
    return has_values if req.get("operator") in ("In", "NotIn") else not has_values


def _endpoint_profile(profile: Obj) -> bool:
    return ("endpointSPIFFEID" in profile) == (profile.get("type") == "https_spiffe")


# CEL rule (exact text in the CRDs) → the same check in Python, given the object the rule is on.
_CEL_RULES: Final[Mapping[str, Callable[[Obj], bool]]] = {
    "self.operator in ['In', 'NotIn'] ? (has(self.values) && size(self.values) > 0) : "
    "(!has(self.values) || size(self.values) == 0)": _label_requirement_values,
    "!has(self.namespaceSelector)": lambda spec: "namespaceSelector" not in spec,
    "self.type == 'https_spiffe' ? has(self.endpointSPIFFEID) : !has(self.endpointSPIFFEID)": (
        _endpoint_profile
    ),
}


class CrdError(Exception):
    """The CRD files are missing or malformed, or a kind is unknown."""


@dataclass(frozen=True)
class Crd:
    """One kind's CRD as loaded from the chart."""

    kind: str
    plural: str
    namespaced: bool
    path: Path
    definition: Mapping[str, Any]  # the whole CustomResourceDefinition object
    schema: Mapping[str, Any]  # its openAPIV3Schema for VERSION, as written

    @functools.cached_property
    def _validator(self) -> Any:
        jsonschema = _jsonschema()
        return _validator_class()(_strict(self.schema), format_checker=jsonschema.FormatChecker())

    def validate(self, obj: Obj) -> list[str]:
        """Every problem with ``obj``, each as "<field path>: <what is wrong>"; [] if valid."""
        if not isinstance(obj, Mapping):
            return [f"expected a {self.kind} object, got {type(obj).__name__}"]
        problems = self._header(obj)
        problems += [m for e in self._validator.iter_errors(obj) for m in _messages(e)]
        return sorted(set(problems))

    def _header(self, obj: Obj) -> list[str]:
        problems = []
        if obj.get("apiVersion") != API_VERSION:
            problems.append(f"apiVersion: expected {API_VERSION}, got {obj.get('apiVersion')!r}")
        if obj.get("kind") != self.kind:
            problems.append(f"kind: expected {self.kind}, got {obj.get('kind')!r}")
        meta = obj.get("metadata")
        if not isinstance(meta, Mapping) or not isinstance(meta.get("name"), str):
            problems.append("metadata.name: required")
        return problems


def load_crds(directory: Path | None = None) -> dict[str, Crd]:
    """Every herald CRD in ``directory`` (default: the source tree's chart), by kind."""
    return dict(_load(Path(directory or SOURCE_CRD_DIR).resolve()))


@functools.lru_cache(maxsize=8)
def _load(directory: Path) -> tuple[tuple[str, Crd], ...]:
    if not directory.is_dir():
        raise CrdError(
            f"no CRD directory at {directory}; pass the herald chart's files/crds/ "
            "folder (helm pull herald --untar) to load_crds()"
        )
    crds: dict[str, Crd] = {}
    for path in sorted(directory.glob(f"{GROUP}_*.yaml")):
        crd = _read(path)
        if crd.kind in crds:
            raise CrdError(f"{path}: kind {crd.kind} is also defined in {crds[crd.kind].path}")
        crds[crd.kind] = crd
    missing = sorted(set(KINDS) - set(crds))
    if missing:
        raise CrdError(f"{directory}: no CRD for {', '.join(missing)}")
    return tuple((kind, crds[kind]) for kind in KINDS)


def _read(path: Path) -> Crd:
    docs = [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
    if len(docs) != 1 or docs[0].get("kind") != "CustomResourceDefinition":
        raise CrdError(f"{path}: expected exactly one CustomResourceDefinition")
    spec = docs[0]["spec"]
    if spec.get("group") != GROUP:
        raise CrdError(f"{path}: group is {spec.get('group')!r}, not {GROUP}")
    versions = [v for v in spec.get("versions", []) if v.get("name") == VERSION]
    if len(versions) != 1:
        raise CrdError(f"{path}: no single version {VERSION}")
    schema = versions[0]["schema"]["openAPIV3Schema"]
    unknown = sorted(set(_cel_rules(schema)) - set(_CEL_RULES))
    if unknown:
        raise CrdError(f"{path}: CEL rules without a Python equivalent in crds.py: {unknown}")
    return Crd(
        kind=spec["names"]["kind"],
        plural=spec["names"]["plural"],
        namespaced=spec.get("scope") == "Namespaced",
        path=path,
        definition=docs[0],
        schema=schema,
    )


def validate(kind: str, obj: Obj, *, directory: Path | None = None) -> list[str]:
    """Check ``obj`` against ``kind``'s CRD; the problems found, each naming its field."""
    crds = load_crds(directory)
    if kind not in crds:
        raise CrdError(f"unknown kind {kind!r}; herald's kinds are {', '.join(KINDS)}")
    return crds[kind].validate(obj)


# --- schema translation ----------------------------------------------------------------------


def schema_nodes(schema: Mapping[str, Any], path: str = "") -> Iterator[tuple[str, Obj]]:
    """Every field's schema with its path (``.spec.podSelector``; ``[]`` items, ``.*`` map values).

    The branches of ``anyOf`` (herald uses it only for int-or-string) are not fields of their own.
    """
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from schema_nodes(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), Mapping):
        yield from schema_nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), Mapping):
        yield from schema_nodes(schema["additionalProperties"], f"{path}.*")


def _cel_rules(schema: Mapping[str, Any]) -> Iterator[str]:
    for _, node in schema_nodes(schema):
        for rule in node.get("x-kubernetes-validations", []):
            yield rule["rule"]


def _strict(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``schema`` in which objects with properties refuse unknown fields."""
    out: dict[str, Any] = dict(schema)
    if "properties" in out:
        out["properties"] = {name: _strict(sub) for name, sub in out["properties"].items()}
        if not out.get("x-kubernetes-preserve-unknown-fields"):
            out.setdefault("additionalProperties", False)
    for key in ("items", "additionalProperties"):
        if isinstance(out.get(key), Mapping):
            out[key] = _strict(out[key])
    return out


def _jsonschema() -> Any:
    try:
        import jsonschema  # type: ignore[import-untyped]  # test extra; no stubs
    except ImportError as exc:  # a production install without the test extra
        raise CrdError(
            "validating against the CRDs needs jsonschema: pip install jsonschema"
        ) from exc
    return jsonschema


@functools.cache
def _validator_class() -> Any:
    jsonschema = _jsonschema()
    return jsonschema.validators.extend(
        jsonschema.Draft4Validator,
        {"x-kubernetes-list-type": _list_type, "x-kubernetes-validations": _cel},
    )


def _error(message: str) -> Any:
    return _jsonschema().ValidationError(message)


def _list_type(
    validator: Any, list_type: str, instance: Any, schema: Mapping[str, Any]
) -> Iterator[Any]:
    if not isinstance(instance, list):
        return
    if list_type == "set":
        seen: list[Any] = []
        for item in instance:
            if item in seen:
                yield _error(f"duplicate item {item!r}")
            seen.append(item)
    elif list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys", [])
        found = [tuple(item.get(k) for k in keys) for item in instance if isinstance(item, dict)]
        for dup in sorted({k for k in found if found.count(k) > 1}, key=repr):
            yield _error(f"two items with the same {', '.join(keys)}: {dup!r}")


def _cel(
    validator: Any, rules: list[Mapping[str, str]], instance: Any, schema: Mapping[str, Any]
) -> Iterator[Any]:
    if not isinstance(instance, Mapping):
        return
    for rule in rules:
        if not _CEL_RULES[rule["rule"]](instance):
            field = rule.get("fieldPath", "").lstrip(".")
            error = _error(rule.get("message", f"failed rule: {rule['rule']}"))
            # jsonschema prepends the parents' path; the rule's fieldPath goes below it.
            error.path.extend(field.split(".") if field else [])
            yield error


# --- messages --------------------------------------------------------------------------------


def _path(parts: Iterable[str | int]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out.lstrip(".")


def _join(base: str, name: str) -> str:
    return f"{base}.{name}" if base else name


def _messages(error: Any) -> list[str]:
    where = _path(error.absolute_path)
    instance, value = error.instance, error.validator_value
    if error.validator == "additionalProperties" and isinstance(instance, Mapping):
        known = error.schema.get("properties", {})
        return [f"{_join(where, name)}: unknown field" for name in instance if name not in known]
    if error.validator == "required" and isinstance(instance, Mapping):
        return [f"{_join(where, name)}: required" for name in value if name not in instance]
    if error.validator == "anyOf" and error.schema.get("x-kubernetes-int-or-string"):
        return [f"{where}: expected an integer or a string, got {instance!r}"]
    if error.validator == "pattern":
        return [f"{where}: {instance!r} does not match {value}"]
    return [f"{where or '<object>'}: {error.message}"]
