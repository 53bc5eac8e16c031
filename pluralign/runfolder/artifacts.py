"""The run folder's JSON files as typed artifacts: em.json (EMInfo), aggregate.json
(AggregateInfo) and evaluation.json (EvaluationInfo), each a dataclass with a schema version,
checked field by field on load and on save (types, shapes, finiteness, the number of types
agreeing across files), so that a hand-edited or corrupted file stops the command with one
line naming the file and the field, never a traceback or a NaN carried into results.

The checked fields are attributes; a file's other sections (the fit's selection table, the
report's tables) stay plain JSON in `extra` and are read by key (an artifact is a Mapping)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pluralign.core.io import write_json
from pluralign.core.schema import (
    ArtifactError,
    Rule,
    check,
    integer,
    mapping,
    matrix,
    number,
    one_of,
    optional,
    probabilities,
    read_object,
    sequence,
    text,
)
from pluralign.settings import BACKENDS, BASE_MEASURES, OBJECTIVES
from pluralign.settings.backends import BACKEND_CONFIGS

#: The run-folder format's version, written into every artifact. A file without one was
#: written before versions (1); a file with a higher one by a newer pluralign.
SCHEMA = 1


class Artifact(Mapping[str, Any]):
    """A run-folder JSON file: typed fields, the rest in `extra`, one schema version."""

    FILE: ClassVar[str]
    OPTIONAL: ClassVar[tuple[str, ...]] = ()
    #: Optional fields a file leaves out, rather than writing null, when they have no value.
    OMIT_WHEN_NONE: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def rules(cls, obj: dict[str, Any], **context: Any) -> dict[str, Rule]:
        raise NotImplementedError

    @classmethod
    def from_dict(cls, obj: Any, path: str | Path | None = None, **context: Any) -> Any:
        """The artifact in `obj`, checked (errors name `path`, or the artifact's file name)."""
        where = path if path is not None else cls.FILE
        if not isinstance(obj, dict):
            raise ArtifactError(where, None, f"expected a JSON object, got {type(obj).__name__}")
        check(obj, where, {"schema": integer(1)}, optional_keys=("schema",))
        if obj.get("schema", 1) > SCHEMA:
            raise ArtifactError(where, "schema", f"version {obj['schema']} is newer than this "
                                f"pluralign reads ({SCHEMA}); upgrade pluralign")
        check(obj, where, cls.rules(obj, **context), cls.OPTIONAL)
        names = {f.name for f in dataclasses.fields(cls)} - {"extra", "schema"}
        typed = {k: obj[k] for k in names if k in obj}
        extra = {k: v for k, v in obj.items() if k not in names and k != "schema"}
        return cls(**typed, extra=extra)  # type: ignore[call-arg]

    @classmethod
    def load(cls, path: str | Path, **context: Any) -> Any:
        """The artifact read from `path` and checked."""
        return cls.from_dict(read_object(path), path, **context)

    def to_dict(self) -> dict[str, Any]:
        typed = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)  # type: ignore[arg-type]
                 if f.name not in ("extra", "schema") and not (
                     f.name in self.OMIT_WHEN_NONE and getattr(self, f.name) is None)}
        return {"schema": SCHEMA, **typed, **self.extra}  # type: ignore[attr-defined]

    def save(self, path: str | Path, **context: Any) -> None:
        """Write the artifact atomically as strict JSON, checked first: pluralign never writes
        a file it would refuse to read."""
        type(self).from_dict(self.to_dict(), path, **context)
        write_json(path, self.to_dict())

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


@dataclass(eq=False)
class EMInfo(Artifact):
    """em.json: the EM fit's summary (pluralign.stages.em writes it)."""

    FILE: ClassVar[str] = "em.json"
    OPTIONAL: ClassVar[tuple[str, ...]] = ("data", "warnings", "audit", "loglik_history")

    backend: str
    n_types: int
    policies: str
    priors: list[float]
    backend_options: dict[str, Any]
    data: str | None = None
    warnings: list[Any] = field(default_factory=list)
    audit: dict[str, Any] | None = None
    loglik_history: list[float | None] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def rules(cls, obj: dict[str, Any], **context: Any) -> dict[str, Rule]:
        n = obj.get("n_types")
        return {"backend": one_of(*BACKENDS), "n_types": integer(1), "policies": _relative,
                "backend_options": _backend_options(obj), "data": optional(text),
                "warnings": sequence(), "audit": optional(mapping),
                "loglik_history": sequence(optional(number)),
                "priors": _priors(n if isinstance(n, int) else None)}


def _backend_options(obj: dict[str, Any]) -> Rule:
    """Options the backend's settings class (pluralign.settings.backends) accepts."""
    def rule(v: Any) -> str | None:
        problem = mapping(v)
        if problem is None and obj.get("backend") in BACKEND_CONFIGS:
            try:
                BACKEND_CONFIGS[obj["backend"]](**{**v, "types": 1})
            except (TypeError, ValueError) as e:
                return str(e)
        return problem
    return rule


def _priors(n_types: int | None) -> Rule:
    def rule(v: Any) -> str | None:
        problem = sequence(number)(v)
        if problem is None and n_types is not None and len(v) != n_types:
            return f"lists {len(v)} types, but n_types is {n_types}"
        return problem or probabilities(n_types)(v)
    return rule


def _relative(v: Any) -> str | None:
    """A folder name inside the run folder (never a path leading out of it)."""
    if not isinstance(v, str) or not v or "/" in v or "\\" in v or v in (".", ".."):
        return f"expected a folder name inside the run folder, got {v!r}"
    return None


@dataclass(eq=False)
class AggregateInfo(Artifact):
    """aggregate.json: the fair policy, its regrets and what it was made from; checked against
    the run's number of types (`n_types=` on load and save)."""

    FILE: ClassVar[str] = "aggregate.json"

    types: list[str]
    policies: list[str]
    weights: list[float]
    max_regret: float
    binding: list[Any]
    baselines: dict[str, Any]
    objective: str
    made_from: dict[str, Any]
    regret_matrix: list[list[float | None]]
    base_measure: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def rules(cls, obj: dict[str, Any], **context: Any) -> dict[str, Rule]:
        k = context["n_types"]
        policies = obj.get("policies")
        return {"types": sequence(text, k), "policies": sequence(text),
                "weights": probabilities(k), "max_regret": number,
                "binding": sequence(length=k), "baselines": mapping,
                "objective": one_of(*OBJECTIVES), "made_from": mapping,
                "base_measure": optional(one_of(*BASE_MEASURES)),
                "regret_matrix": matrix(k, len(policies) if isinstance(policies, list) else 0)}


@dataclass(eq=False)
class EvaluationInfo(Artifact):
    """evaluation.json: every policy against every type, discovery and personalization."""

    FILE: ClassVar[str] = "evaluation.json"
    OPTIONAL: ClassVar[tuple[str, ...]] = ("discovery",)  # only with known labels
    OMIT_WHEN_NONE: ClassVar[tuple[str, ...]] = ("discovery",)

    policies: list[str]
    regret: dict[str, Any]
    metrics: dict[str, Any]
    spread: dict[str, Any]
    personalization: dict[str, Any]
    confidence_histogram: list[Any]
    annotators: int
    annotations: int
    made_from: dict[str, Any]
    discovery: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def rules(cls, obj: dict[str, Any], **context: Any) -> dict[str, Rule]:
        return {"policies": sequence(text), "regret": mapping, "metrics": mapping,
                "spread": mapping, "personalization": mapping, "discovery": mapping,
                "confidence_histogram": sequence(), "annotators": integer(0),
                "annotations": integer(0), "made_from": mapping}


def em_info(path: str | Path) -> EMInfo:
    """em.json, checked."""
    return EMInfo.load(path)


def aggregate_info(path: str | Path, n_types: int) -> AggregateInfo:
    """aggregate.json, checked against the run's number of types."""
    return AggregateInfo.load(path, n_types=n_types)


def evaluation_info(path: str | Path) -> EvaluationInfo:
    """evaluation.json, checked."""
    return EvaluationInfo.load(path)
