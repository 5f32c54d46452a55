"""The run folder's files as typed records, each owning its JSON form (writer and reader share them).

    samples.json   [SampleRecord]   the tokenised forget samples with their ground truth
    records.jsonl  BeforeRecord, then a StepRecord per step, then a FinalRecord (one JSON object a line)
    status.json    Status           where the job is: phase, steps done, error
    config.json    JobConfig        (atwu_core.config) plus versions and model info
    metrics.json   Metrics          (atwu_core.metrics_record)

Every per-token map is {sample id: [one value per answer token]}, answer tokens in order, EOS included.
Old run folders (keys `weights`, no `phase`) still read: `from_json` maps them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import datetime

from atwu_core.data import EncodedSample, Record, span_index

TokenValues = dict[str, list[float]]  # sample id -> one value per answer token
MAX_PID = 1 << 22  # Linux's largest possible pid (PID_MAX_LIMIT): anything above is not a process
MAX_COUNT = 1 << 40  # steps, samples, tokens: far above any job, far below what breaks arithmetic
MAX_NAME = 1000  # characters in a run name, a tag, a host, a state or a phase


class RecordError(ValueError):
    """A run-folder file holds a field of the wrong type or range; the message names the field (the reader adds
    the file). Run folders travel between people, so every value is checked before a view uses it."""


def field_error(key: str, what: str, value: object) -> RecordError:
    """The error every run-file reader raises (here and in `metrics_record`): the field, what it must be, a
    short repr of what it held."""
    return RecordError(f"field {key!r} must be {what}, got {_short(value)}")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# the scalar checks every run-file reader uses (here and `metrics_record.Block`), each naming the field it checks


def check_int(value: object, key: str, lo: int = 0, hi: int = MAX_COUNT) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise field_error(key, f"an integer from {lo} to {hi}", value)
    return value


def check_number(value: object, key: str, what: str = "a number", lo: float = -math.inf, hi: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise field_error(key, what, value)
    return float(value)


def check_text(value: object, key: str, limit: int | None) -> str:
    if not isinstance(value, str) or (limit is not None and len(value) > limit):
        raise field_error(key, "a string" + (f" of at most {limit} characters" if limit else ""), value)
    return value


def check_bool(value: object, key: str) -> bool:
    if not isinstance(value, bool):
        raise field_error(key, "true or false", value)
    return value


def _int(data: dict, key: str, default: int | None = 0, lo: int = 0, hi: int = MAX_COUNT) -> int | None:
    value = data.get(key, default)
    return None if value is None and default is None else check_int(value, key, lo, hi)


def _number(data: dict, key: str, default: float = 0.0) -> float:
    return check_number(data.get(key, default), key)


def _text(data: dict, key: str, default: str | None = "", limit: int | None = MAX_NAME) -> str | None:
    value = data.get(key, default)
    return None if value is None and default is None else check_text(value, key, limit)


def _list(data: dict, key: str, ok, what: str, default: list | None = None) -> list:
    value = data.get(key, default)
    if not isinstance(value, list) or not all(ok(v) for v in value):
        raise field_error(key, f"a list of {what}", value)
    return value


def _is_number(v: object) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def _numbers_map(data: dict, key: str) -> dict[str, float | None]:
    value = data.get(key, {})
    if not isinstance(value, dict) or not all(isinstance(k, str) and _is_number(v) for k, v in value.items()):
        raise field_error(key, "an object of numbers", value)
    return value


def _token_values(data: dict, key: str) -> TokenValues:
    """{sample id: [number or null per token]}: every value checked (a view does arithmetic on them)."""
    value = data.get(key, {})
    if not isinstance(value, dict) or not all(
        isinstance(sid, str) and isinstance(v, list) and all(map(_is_number, v)) for sid, v in value.items()
    ):
        raise field_error(key, "an object of {sample id: [numbers]}", value)
    return value


def json_object(data: object, what: str) -> dict:
    """`data` when it is a JSON object; a file of the wrong shape is refused before any field is read."""
    if not isinstance(data, dict):
        raise RecordError(f"{what} is not a JSON object (it holds a {type(data).__name__})")
    return data


def _sig(values: TokenValues, digits: int = 5) -> TokenValues:
    """Round to significant digits (not decimals): a forgotten token's p = 3e-9 must not become 0."""
    return {sid: [float(f"{x:.{digits}g}") if math.isfinite(x) else None for x in v] for sid, v in values.items()}


@dataclass
class SampleRecord:
    """One forget sample as the run folder keeps it: enough to draw it and to judge scores against its spans."""

    record_id: str
    question: str
    answer: str
    tokens: list[str]
    token_ids: list[int]
    offsets: list[tuple[int, int]]
    span_mask: list[bool]
    span_labels: list[str | None]  # the label of the span each token overlaps (name, birthplace, ...), else None
    has_ground_truth: bool

    @classmethod
    def from_encoded(cls, sample: EncodedSample, record: Record) -> SampleRecord:
        spans = record.forget_spans
        labels = [spans[k].label if k is not None else None for k in span_index(sample.answer_offsets, spans)]
        return cls(
            record_id=sample.record_id,
            question=record.question,
            answer=record.answer,
            tokens=sample.answer_tokens,
            token_ids=sample.answer_token_ids,
            offsets=sample.answer_offsets,
            span_mask=sample.span_mask,
            span_labels=labels,
            has_ground_truth=sample.has_ground_truth,
        )

    @property
    def content_mask(self) -> list[bool]:
        """True on tokens that cover answer text, False on EOS and special tokens; all True for old runs without
        offsets."""
        return [e > s for s, e in self.offsets] if self.offsets else [True] * len(self.span_mask)

    def to_json(self) -> dict:
        out = asdict(self)
        out["id"] = out.pop("record_id")
        out["span_mask"] = [int(m) for m in self.span_mask]
        return out

    @classmethod
    def from_json(cls, data: object) -> SampleRecord:
        data = json_object(data, "a sample")
        tokens = _list(data, "tokens", lambda t: isinstance(t, str), "strings")
        mask = _list(data, "span_mask", lambda m: m in (0, 1), "0/1 flags")
        labels = data.get("span_labels") or [("forget" if m else None) for m in mask]
        labels = _list({"span_labels": labels}, "span_labels", lambda v: v is None or isinstance(v, str), "labels")
        offsets = _list(
            data,
            "offsets",
            lambda o: isinstance(o, list) and len(o) == 2 and all(isinstance(x, int) for x in o),
            "[start, end] pairs",
            [],
        )
        for key, values in (("span_mask", mask), ("span_labels", labels)):
            if len(values) != len(tokens):
                raise RecordError(f"field {key!r} has {len(values)} entries for {len(tokens)} tokens")
        ground_truth = check_bool(data.get("has_ground_truth", any(mask)), "has_ground_truth")
        if not isinstance(data.get("id"), str):
            raise field_error("id", "a string", data.get("id"))
        return cls(
            record_id=data["id"],
            question=_text(data, "question", limit=None),
            answer=_text(data, "answer", limit=None),
            tokens=list(tokens),
            token_ids=list(_list(data, "token_ids", lambda i: isinstance(i, int), "integers", [])),
            offsets=[tuple(o) for o in offsets],
            span_mask=[bool(m) for m in mask],
            span_labels=list(labels),
            has_ground_truth=ground_truth,
        )


@dataclass
class BeforeRecord:
    """Each forget answer token's probability under the loaded model, before any update (the first line)."""

    probs: TokenValues = field(repr=False)

    def to_json(self) -> dict:
        return {"type": "before", "probs": _sig(self.probs)}

    @classmethod
    def from_json(cls, data: dict) -> BeforeRecord:
        return cls(probs=_token_values(data, "probs"))


TOKEN_MAPS = ("scores", "loss_weights", "probs")  # the per-token fields of a step and a final record


def _token_maps_json(record: StepRecord | FinalRecord) -> dict:
    return {key: _sig(getattr(record, key)) for key in TOKEN_MAPS}


def _token_maps(data: dict) -> dict[str, TokenValues]:
    """The per-token maps of a step or final line, each checked (empty where an older line lacks one);
    `weights` held the scores before records.py."""
    old = "scores" not in data and "weights" in data
    return {key: _token_values(data, "weights" if key == "scores" and old else key) for key in TOKEN_MAPS}


@dataclass
class StepRecord:
    """One model step: losses, learning rates, and per-token values of the samples in this step's batch.

    `scores` are the scheme's forget scores (ATWU's g, WGA's p^beta, ...); `loss_weights` the weights the forget
    loss actually used (ATWU's g * p^beta); `probs` each answer token's probability before this step's update.
    """

    step: int
    elapsed: float
    losses: dict[str, float]
    lrs: dict[str, float]
    tokens: int
    scores: TokenValues = field(repr=False)
    loss_weights: TokenValues = field(repr=False)
    probs: TokenValues = field(repr=False)

    def to_json(self) -> dict:
        head = {"type": "step", "step": self.step, "elapsed": round(self.elapsed, 4), "losses": self.losses}
        return {**head, "lrs": self.lrs, "tokens": self.tokens, **_token_maps_json(self)}

    @classmethod
    def from_json(cls, data: dict) -> StepRecord:
        if "step" not in data:
            raise RecordError("field 'step' is missing")
        return cls(
            step=_int(data, "step"),
            elapsed=_number(data, "elapsed"),
            losses=_numbers_map(data, "losses"),
            lrs=_numbers_map(data, "lrs"),
            tokens=_int(data, "tokens"),
            **_token_maps(data),
        )


@dataclass
class FinalRecord:
    """A last pass over every forget sample with the final model (and scorer): what the metrics judge.

    `score_ema`: each token's score averaged over the job (`job_end.score_ema`), for schemes that ask for it
    (ATWU's `score_ema` decay); empty otherwise and in runs written before it."""

    step: int
    scores: TokenValues = field(repr=False)
    loss_weights: TokenValues = field(repr=False)
    probs: TokenValues = field(repr=False)
    score_ema: TokenValues = field(default_factory=dict, repr=False)

    def to_json(self) -> dict:
        ema = {"score_ema": _sig(self.score_ema)} if self.score_ema else {}
        return {"type": "final", "step": self.step, **_token_maps_json(self), **ema}

    @classmethod
    def from_json(cls, data: dict) -> FinalRecord:
        return cls(step=_int(data, "step"), **_token_maps(data), score_ema=_token_values(data, "score_ema"))


# reference: the loaded model's NLL on every forget token (one forward over the forget set, as the final pass is)
PHASES = ("loading", "reference", "before", "training", "final", "after", "done")


@dataclass
class Status:
    """Where a job is. `phase` is one of PHASES; `phase_done`/`phase_total` count within it (samples or steps)."""

    state: str  # running | completed | cancelled | failed | interrupted | unknown
    steps_done: int = 0
    steps_total: int = 0
    phase: str = "loading"
    phase_done: int = 0
    phase_total: int = 0
    error: str | None = None
    updated: str | None = None
    pid: int | None = None
    host: str | None = None
    phase_seconds: dict[str, float] = field(default_factory=dict)  # seconds spent in each phase so far

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: object) -> Status:
        data = json_object(data, "the file")
        if "state" not in data:
            raise RecordError("field 'state' is missing")
        phase = data.get("phase") or ("training" if data["state"] == "running" else "done")  # before phases existed
        seconds = _numbers_map(data, "phase_seconds")
        if any(v is None for v in seconds.values()):
            raise field_error("phase_seconds", "an object of numbers", seconds)
        updated = _text(data, "updated", None)
        if updated is not None:
            try:
                datetime.fromisoformat(updated)
            except ValueError:
                raise field_error("updated", "an ISO date and time", updated) from None
        return cls(
            state=_text(data, "state"),
            steps_done=_int(data, "steps_done"),
            steps_total=_int(data, "steps_total"),
            phase=_text({"phase": phase}, "phase"),
            phase_done=_int(data, "phase_done"),
            phase_total=_int(data, "phase_total"),
            error=_text(data, "error", None, limit=100_000),
            updated=updated,
            pid=_int(data, "pid", None, lo=1, hi=MAX_PID),
            host=_text(data, "host", None),
            phase_seconds=seconds,
        )

    @property
    def finished(self) -> bool:
        return self.state not in ("running", "unknown")


def parse_line(data: object) -> BeforeRecord | StepRecord | FinalRecord | None:
    """One records.jsonl line as its record (None for a type this version does not know); RecordError names the
    field that is wrong."""
    kind = json_object(data, "a record").get("type")
    kind = {"before": BeforeRecord, "step": StepRecord, "final": FinalRecord}.get(kind if isinstance(kind, str) else "")
    return kind.from_json(data) if kind is not None else None


def check_config(data: object) -> dict:
    """config.json as the views read it: the fields they show or use typed (the job's own settings are checked
    by `JobConfig` when a run is redone). Returns the same dict."""
    data = json_object(data, "the file")
    for key in ("method", "model", "name", "data", "preset", "created", "retain_data"):
        _text(data, key, None)
    _list(data, "tags", lambda t: isinstance(t, str) and len(t) <= MAX_NAME, "short strings", [])
    if not isinstance(data.get("params", {}), dict):
        raise field_error("params", "an object", data.get("params"))
    return data
