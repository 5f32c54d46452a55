"""The run folder's files as typed records, each owning its JSON form (writer and reader share them).

    samples.json   [SampleRecord]   the tokenised forget samples with their ground truth
    records.jsonl  BeforeRecord, then a StepRecord per step, then a FinalRecord (one JSON object a line)
    status.json    Status           where the job is: phase, steps done, error
    config.json    JobConfig        (atwu_core.config) plus versions and model info
    metrics.json   a plain dict     (atwu_core.metrics builds it)

Every per-token map is {sample id: [one value per answer token]}, answer tokens in order, EOS included.
Old run folders (keys `weights`, no `phase`) still read: `from_json` maps them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from atwu_core.data import EncodedSample, Record

TokenValues = dict[str, list[float]]  # sample id -> one value per answer token


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
        labels = [
            next((sp.label for sp in record.forget_spans if s < sp.end and e > sp.start), None)
            for s, e in sample.answer_offsets
        ]
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
    def from_json(cls, data: dict) -> SampleRecord:
        mask = [bool(m) for m in data["span_mask"]]
        return cls(
            record_id=data["id"],
            question=data.get("question", ""),
            answer=data.get("answer", ""),
            tokens=list(data["tokens"]),
            token_ids=list(data.get("token_ids", [])),
            offsets=[tuple(o) for o in data.get("offsets", [])],
            span_mask=mask,
            span_labels=data.get("span_labels") or [("forget" if m else None) for m in mask],
            has_ground_truth=bool(data.get("has_ground_truth", any(mask))),
        )


@dataclass
class BeforeRecord:
    """Each forget answer token's probability under the loaded model, before any update (the first line)."""

    probs: TokenValues = field(repr=False)

    def to_json(self) -> dict:
        return {"type": "before", "probs": _sig(self.probs)}

    @classmethod
    def from_json(cls, data: dict) -> BeforeRecord:
        return cls(probs=data["probs"])


TOKEN_MAPS = ("scores", "loss_weights", "probs")  # the per-token fields of a step and a final record


def _token_maps_json(record: StepRecord | FinalRecord) -> dict:
    return {key: _sig(getattr(record, key)) for key in TOKEN_MAPS}


def _token_maps(data: dict) -> dict[str, TokenValues]:
    """The per-token maps of a step or final line (empty where an older line lacks one); `weights` held the
    scores before records.py."""
    return {key: data.get(key, data.get("weights", {}) if key == "scores" else {}) for key in TOKEN_MAPS}


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
        return cls(
            step=data["step"],
            elapsed=data.get("elapsed", 0.0),
            losses=data.get("losses", {}),
            lrs=data.get("lrs", {}),
            tokens=data.get("tokens", 0),
            **_token_maps(data),
        )


@dataclass
class FinalRecord:
    """A last pass over every forget sample with the final model (and scorer): what the metrics judge."""

    step: int
    scores: TokenValues = field(repr=False)
    loss_weights: TokenValues = field(repr=False)
    probs: TokenValues = field(repr=False)

    def to_json(self) -> dict:
        return {"type": "final", "step": self.step, **_token_maps_json(self)}

    @classmethod
    def from_json(cls, data: dict) -> FinalRecord:
        return cls(step=data.get("step", 0), **_token_maps(data))


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
        if not isinstance(data, dict) or "state" not in data:
            raise ValueError("status.json is not a status object")
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        if "phase" not in data:  # written before phases existed
            known["phase"] = "training" if data["state"] == "running" else "done"
        return cls(**known)

    @property
    def finished(self) -> bool:
        return self.state not in ("running", "unknown")


def parse_line(data: dict) -> BeforeRecord | StepRecord | FinalRecord | None:
    """One records.jsonl line as its record (None for a type this version does not know)."""
    kind = {"before": BeforeRecord, "step": StepRecord, "final": FinalRecord}.get(data.get("type"))
    return kind.from_json(data) if kind is not None else None
