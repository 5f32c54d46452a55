"""metrics.json as a typed record: `Metrics` and its blocks, each owning its JSON form (writer and reader share them,
as `records.py` does for the other run files).

The producers (`metrics.py`, `facts.py`, `evaluation.py`, `job_end.py`) build these blocks; metrics.json is
`Metrics.to_json()`. `Metrics.from_json` reads any run folder's file: a block an older run lacks reads as None (the
views show `headline.NOT_RECORDED`), a number that may be undefined reads as None, and every value is type- and
range-checked (run folders travel between people; a `RecordError` names the field).
"""

from __future__ import annotations

import functools
import math
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Self

from atwu_core.records import (
    RecordError,
    check_bool,
    check_int,
    check_number,
    check_text,
    field_error,
    json_object,
)

MAX_TEXT = 100_000  # characters in one string of metrics.json (an answer, a label, a date)
RATE = {"range": (0.0, 1.0)}  # a share, a probability or an AUROC-like number
SLACK = 1e-6  # a range check's tolerance: a mean of ones or a ratio of sums may land a rounding error past 1
FLAT = {"flat": True}  # a sub-block whose keys sit inline in its parent's object (None when the file lacks them)
OMIT = {"omit": True}  # a key written only when it has a value (None: the key is absent)
_ABSENT = object()


class Block:
    """A dataclass that reads and writes its JSON object field by field, checked by the fields' types: `int`
    (a count), `float` (a number; `RATE` fields within [0, 1]), `bool`, `str`, `list[...]`, `dict[str, ...]` and
    nested blocks; `X | None` fields read as None when the key is absent or null, and `recorded` tells the two apart
    (a file written before a key existed lacks it)."""

    def to_json(self) -> dict:
        out: dict = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("flat"):
                out |= value.to_json() if value is not None else {}
            elif value is not None or not f.metadata.get("omit"):
                out[f.name] = _to_json(value)
        return out

    @classmethod
    def from_json(cls, data: object, where: str = "") -> Self:
        data = json_object(data, f"field {where!r}" if where else "the file")
        hints = _hints(cls)
        values = {}
        for f in fields(cls):
            if f.metadata.get("flat"):
                block = _block(hints[f.name])
                values[f.name] = block.from_json(data, where) if any(g.name in data for g in fields(block)) else None
            else:
                where_f = f"{where}.{f.name}" if where else f.name
                values[f.name] = _read(data.get(f.name, _ABSENT), hints[f.name], where_f, f.metadata)
        out = cls(**values)
        out._absent = frozenset(f.name for f in fields(cls) if not f.metadata.get("flat") and f.name not in data)
        return out

    def recorded(self, name: str) -> bool:
        """Whether field `name` was in the file this block was read from (a block built by its producer holds
        every field)."""
        return name not in getattr(self, "_absent", ())


@functools.cache
def _hints(cls: type) -> dict[str, object]:
    return typing.get_type_hints(cls)


def _block(kind: object) -> type[Block]:
    return next(a for a in typing.get_args(kind) if isinstance(a, type) and issubclass(a, Block))


def _to_json(value: object) -> object:
    if isinstance(value, Block):
        return value.to_json()
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    return value


def _read(value: object, kind: object, where: str, meta: typing.Mapping, nullable: bool = False) -> object:
    """`value` checked against the type `kind`; `where` names it in the error."""
    args = typing.get_args(kind)
    if isinstance(kind, types.UnionType):  # X | None: absent or null reads as None
        if value is _ABSENT or value is None:
            return None
        (kind,) = [a for a in args if a is not type(None)]
        return _read(value, kind, where, meta, nullable=True)
    origin = typing.get_origin(kind)
    if value is _ABSENT:
        if origin in (list, dict):
            return origin()
        raise RecordError(f"field {where!r} is missing")
    if origin is list:
        if not isinstance(value, list):
            raise field_error(where, "a list", value)
        return [_read(v, args[0], f"{where}[{k}]", meta) for k, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise field_error(where, "an object", value)
        return {_read(k, str, f"{where} key", {}): _read(v, args[1], f"{where}.{k}", meta) for k, v in value.items()}
    if isinstance(kind, type) and issubclass(kind, Block):
        return kind.from_json(value, where)
    if kind is bool:
        return check_bool(value, where)
    if kind is int:
        return check_int(value, where)
    if kind is float:
        lo, hi = meta.get("range", (-math.inf, math.inf))
        what = "a number" + (" or null" if nullable else "") + (f" (from {lo:g} to {hi:g})" if "range" in meta else "")
        return check_number(value, where, what, lo - SLACK, hi + SLACK)
    if kind is str:
        return check_text(value, where, MAX_TEXT)
    raise TypeError(f"{where}: no reader for {kind!r}")  # a field declared with a type this module cannot check


# --------------------------------------------------------------------------------------------- scores vs spans


@dataclass(kw_only=True)
class Separation(Block):
    """How well a per-token value singles out the span tokens (None when the pool has one class)."""

    auroc: float | None = field(metadata=RATE)
    auprc: float | None = field(metadata=RATE)
    precision_at_k: float | None = field(metadata=RATE)


@dataclass(kw_only=True)
class Alignment(Separation):
    """The final scores against the spans, pooled over the judged tokens, and per sample; with `score_ema` (ATWU)
    the same pooled AUROC and AUPRC of each token's score averaged over the job. `score_in_span` / `score_out_span`
    (the mean score inside and outside the spans) are the magnitude beside the ranking: an AUROC of 0.6 between
    scores of 0.98 and 0.97 weights every token alike."""

    n_tokens: int | None
    n_positive: int | None
    n_samples: int | None
    per_sample: dict[str, Separation]
    score_in_span: float | None = None  # the mean score of the pooled span tokens
    score_out_span: float | None = None  # ... and of the other pooled answer tokens
    ema_auroc: float | None = field(default=None, metadata=RATE | OMIT)  # ATWU with score_ema: the averaged scores'
    ema_auprc: float | None = field(default=None, metadata=RATE | OMIT)


@dataclass(kw_only=True)
class Magnitude(Block):
    """How far the span and other tokens' NLL rose (nats), and whether that is enough for the ranking to mean
    anything (`meaningful`: at least `metrics.MEANINGFUL_SHARE` of span tokens fell by more than drop_nats)."""

    mean_increase_span: float | None
    mean_increase_other: float | None
    strong_drop_share: float | None = field(metadata=RATE)
    meaningful: bool | None


@dataclass(kw_only=True)
class ForgettingSample(Separation):
    mean_increase: float | None


@dataclass(kw_only=True)
class Forgetting(Separation):
    """Realised forgetting (each token's NLL increase) against the spans: ranking (`Separation`, `span_share`)
    beside `magnitude` (None in runs written before it)."""

    span_share: float | None = field(metadata=RATE)
    magnitude: Magnitude | None = field(metadata=FLAT)
    drop_nats: float | None
    meaningful_rule: str | None
    per_sample: dict[str, ForgettingSample]


@dataclass(kw_only=True)
class Trajectory(Block):
    """Per step (over that step's batch): score and forgetting AUROC, the forgetting magnitude so far (None in runs
    written before it), the mean score inside and outside the spans. Every list has one entry per step."""

    step: list[int]
    score_auroc: list[float | None] = field(metadata=RATE)
    forgetting_auroc: list[float | None] = field(metadata=RATE)
    score_in_span: list[float | None]
    score_out_span: list[float | None]
    mean_increase_span: list[float | None] | None
    mean_increase_other: list[float | None] | None
    strong_drop_share: list[float | None] | None = field(metadata=RATE)

    @classmethod
    def from_json(cls, data: object, where: str = "") -> Self:
        out = super().from_json(data, where)
        for f in fields(out):
            values = getattr(out, f.name)
            if values is not None and len(values) != len(out.step):
                raise RecordError(f"field '{where}.{f.name}' has {len(values)} entries for {len(out.step)} steps")
        return out


# --------------------------------------------------------------------------------------------- answer quality


@dataclass(kw_only=True)
class Quality(Block):
    """Answer quality of one split under one model (`metrics.quality_and_answers`); the truth ratios only where
    the split has paraphrased and perturbed answers."""

    n: int | None
    prob: float | None = field(metadata=RATE)
    rouge_l: float | None = field(metadata=RATE)
    exact: float | None = field(metadata=RATE)
    extraction_strength: float | None = field(metadata=RATE)
    exact_memorization: float | None = field(metadata=RATE)
    truth_ratio: float | None = field(default=None, metadata=RATE | OMIT)
    truth_ratio_form: str | None = field(default=None, metadata=OMIT)
    truth_ratios: list[float] | None = field(default=None, metadata=OMIT)


@dataclass(kw_only=True)
class BeforeAfter(Block):
    """A split's quality under the loaded model and under the final one."""

    before: Quality | None
    after: Quality | None


@dataclass(kw_only=True)
class ForgetQuality(Block):
    """TOFU's forget quality: the KS-test p-value against a retain-only model, over `n` forget records."""

    value: float | None = field(metadata=RATE)
    n: int | None  # None: written before n was recorded

    @classmethod
    def from_json(cls, data: object, where: str = "") -> Self:
        if isinstance(data, (int, float)) and not isinstance(data, bool):  # a bare number in older runs
            return cls(value=_read(data, float, where, RATE), n=None)
        return super().from_json(data, where)


@dataclass(kw_only=True)
class UtilityPart(Block):
    """TOFU's three values on one model-utility set."""

    n: int
    prob: float | None = field(metadata=RATE)
    rouge_l: float | None = field(metadata=RATE)
    truth_ratio: float | None = field(metadata=RATE)


@dataclass(kw_only=True)
class ModelUtility(Block):
    """TOFU's model utility: the harmonic mean of its 9 values (None, with `why`, when it cannot be had)."""

    value: float | None = field(metadata=RATE)
    why: str | None = field(default=None, metadata=OMIT)
    parts: dict[str, UtilityPart]


# --------------------------------------------------------------------------------------------- facts


@dataclass(kw_only=True)
class SpanVerdict(Block):
    """One span of a forget answer, judged on the final model (see `facts.py`)."""

    label: str
    text: str
    start: int
    end: int
    leaked: bool
    leaked_paraphrased: bool | None
    extractable: bool
    logprob_before: float | None
    logprob_after: float | None


@dataclass(kw_only=True)
class FactSample(Block):
    answer: str
    spans: list[SpanVerdict]
    paraphrased_answer: str | None = field(default=None, metadata=OMIT)


@dataclass(kw_only=True)
class FactRates(Block):
    """Spans, how many are still said and still extractable, over a set of spans (all of one label)."""

    spans: int
    leaked: int
    extractable: int
    leak_rate: float | None = field(metadata=RATE)
    extractable_rate: float | None = field(metadata=RATE)
    paraphrased_spans: int | None
    paraphrased_leak_rate: float | None = field(metadata=RATE)


@dataclass(kw_only=True)
class Facts(Block):
    """Fact-level forgetting over the forget records with spans: totals, per span label, per sample."""

    n_samples: int
    n_spans: int
    n_leaked: int
    n_extractable: int
    leak_rate: float | None = field(metadata=RATE)
    extractable_rate: float | None = field(metadata=RATE)
    paraphrased_leak_rate: float | None = field(metadata=RATE)
    per_label: dict[str, FactRates]
    per_sample: dict[str, FactSample]


# --------------------------------------------------------------------------------------------- the file


@dataclass(kw_only=True)
class Timing(Block):
    """Seconds per phase and in all, the training loop's step time and throughput, the device's peak memory."""

    total_seconds: float
    training_seconds: float | None
    phase_seconds: dict[str, float]
    mean_step_seconds: float
    tokens_per_second: float
    peak_memory_mb: float
    steps: int


@dataclass(kw_only=True)
class Metrics(Block):
    """A finished job's metrics.json. The quality blocks, facts, forget quality and model utility exist only for a
    job judged after training (completed; forget quality with a retain model, model utility with utility sets);
    `timing` is added by the job, `recomputed` (when) by `atwu eval --recompute`."""

    alignment: Alignment | None = field(default=None, metadata=OMIT)
    forgetting: Forgetting | None = field(default=None, metadata=OMIT)
    trajectory: Trajectory | None = field(default=None, metadata=OMIT)
    forget: BeforeAfter | None = field(default=None, metadata=OMIT)
    retain: BeforeAfter | None = field(default=None, metadata=OMIT)
    facts: Facts | None = field(default=None, metadata=OMIT)
    forget_quality: ForgetQuality | None = field(default=None, metadata=OMIT)
    model_utility: ModelUtility | None = field(default=None, metadata=OMIT)
    timing: Timing | None = field(default=None, metadata=OMIT)
    recomputed: str | None = field(default=None, metadata=OMIT)

    def quality(self, split: str) -> BeforeAfter | None:
        """The quality block of a split by name ("forget" or "retain")."""
        return {"forget": self.forget, "retain": self.retain}[split]

    def exact_after(self, split: str) -> float | None:
        """The share of exact greedy answers on a split after the job (None where it was not judged)."""
        block = self.quality(split)
        return block.after.exact if block is not None and block.after is not None else None
