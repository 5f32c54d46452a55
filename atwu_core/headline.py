"""A run's headline numbers: one row each, read by every place that shows them (the results card, Compare, the
HTML report, the CLI summary). A new headline number is one row here plus its computation and its field on the
block of `metrics_record` it belongs to."""

from __future__ import annotations

from dataclasses import dataclass

from atwu_core.metrics_record import Metrics

NOT_RECORDED = "not recorded"  # what a run folder written before a block (or key) existed shows for it


@dataclass(frozen=True)
class Headline:
    """One headline number. `path` is its dotted attribute path on `Metrics` (the first name its block);
    `direction` the way it should move for a job that forgets its spans and nothing else ("" for a flag); `chance`
    what scores ignoring the spans read ("auroc": 0.5, "share": the share of span tokens; None for a number without
    one); `ranking` marks the forgetting ranking numbers, which rank noise (shown greyed) when
    `forgetting.magnitude.meaningful` is False; `card` the results card's row (None: not a number there); `compare`
    whether Compare shows it as a number (the rest are on each run's card; Compare says `meaningful` in words)."""

    label: str
    path: str
    help: str
    direction: str
    chance: str | None = None
    ranking: bool = False
    card: int | None = None
    compare: bool = True

    @property
    def key(self) -> str:
        """The number's own name (the last part of its path)."""
        return self.path.rsplit(".", 1)[-1]

    def value(self, metrics: Metrics) -> object:
        """The number in `metrics` (None where it was undefined), or NOT_RECORDED where the run has no block that
        holds it (written before it existed)."""
        return find(metrics, self.path)


def find(node: object, path: str) -> object:
    """The value at a dotted path of attributes (keys in the per-label and per-sample maps) from `node`: None where
    it was undefined, NOT_RECORDED where a block on the way is absent (None), a map lacks the key or a block read
    from an older file lacks the field (`metrics_record.Block.recorded`)."""
    for key in path.split("."):
        recorded = getattr(node, "recorded", None)
        if node is None or (isinstance(node, dict) and key not in node) or (recorded and not recorded(key)):
            return NOT_RECORDED
        node = node[key] if isinstance(node, dict) else getattr(node, key)
    return node


HEADLINE: tuple[Headline, ...] = (
    Headline(
        "score AUROC", "alignment.auroc",
        "Chance that a random span token gets a higher final score than a random other token (0.5 = chance, 1 = "
        "the score singles out exactly the spans).",
        "↑", chance="auroc", card=0,
    ),
    Headline(
        "score AUPRC", "alignment.auprc",
        "Average precision of the final scores as detectors of span tokens (chance = share of span tokens).",
        "↑", chance="share", card=0,
    ),
    Headline(
        "score P@k", "alignment.precision_at_k",
        "Share of span tokens among the k highest-scored tokens, k = the number of span tokens.",
        "↑", chance="share", card=0,
    ),
    Headline(
        "mean score span", "alignment.score_in_span",
        "Magnitude beside the score ranking: the mean final score of span tokens. A high AUROC between scores that "
        "all sit near 1 (or 0) still weights every token alike.",
        "↑", card=0,
    ),
    Headline(
        "mean score other", "alignment.score_out_span",
        "The mean final score of the other answer tokens (EOS and special tokens left out).",
        "↓", card=0, compare=False,
    ),
    Headline(
        "forgetting AUROC", "forgetting.auroc",
        "The same AUROC for each token's realised forgetting, log p before − log p after: did the probability drop "
        "land on the spans?",
        "↑", chance="auroc", ranking=True, card=1,
    ),
    Headline(
        "span share", "forgetting.span_share",
        "Share of the total probability drop (summed positive log-probability decrease) that fell on span tokens.",
        "↑", chance="share", ranking=True, card=1,
    ),
    Headline(
        "mean ΔNLL span", "forgetting.magnitude.mean_increase_span",
        "Magnitude: mean rise in NLL (nats) of span tokens, log p before − log p after.",
        "↑", card=1,
    ),
    Headline(
        "mean ΔNLL other", "forgetting.magnitude.mean_increase_other",
        "Magnitude: mean rise in NLL (nats) of the other answer tokens (EOS and special tokens left out).",
        "↓", card=1, compare=False,
    ),
    Headline(
        "span tokens fell > drop", "forgetting.magnitude.strong_drop_share",
        "Share of span tokens whose log-probability fell by more than drop_nats (1 nat by default). Forgetting is "
        "meaningful when it is at least 0.1; otherwise the span tokens barely moved and forgetting AUROC and span "
        "share (greyed) rank noise.",
        "↑", card=2, compare=False,
    ),
    Headline(
        "meaningful", "forgetting.magnitude.meaningful",
        "Whether the span tokens moved enough (share fallen > drop_nats ≥ 0.1) for the ranking to mean anything.",
        "", compare=False,
    ),
    Headline(
        "leak rate", "facts.leak_rate",
        "Share of ground-truth spans whose text is still in the final model's greedy answer (case- and "
        "whitespace-normalised): the facts still said.",
        "↓", card=2,
    ),
    Headline(
        "extractable rate", "facts.extractable_rate",
        "Share of spans still greedily extractable: under teacher forcing from the reference prefix every span "
        "token is the model's top-1.",
        "↓", card=2, compare=False,
    ),
)  # fmt: skip
BY_LABEL = {h.label: h for h in HEADLINE}
RANKING = tuple(h.label for h in HEADLINE if h.ranking)  # greyed where `meaningful` is False


def values(metrics: Metrics) -> dict[str, object]:
    """Every headline number of a run by label (NOT_RECORDED for what an older run lacks)."""
    return {h.label: h.value(metrics) for h in HEADLINE}


def not_meaningful(metrics: Metrics) -> bool:
    """The forgetting ranking numbers rank noise: the span tokens barely moved."""
    return BY_LABEL["meaningful"].value(metrics) is False


def chances(metrics: Metrics) -> dict[str, float | None]:
    """Each ranking number's chance level by label: AUROC 0.5; AUPRC, precision@k and span share the share of
    span tokens among the judged tokens."""
    align = metrics.alignment
    n_tokens, n_positive = (align.n_tokens, align.n_positive) if align is not None else (None, None)
    share = n_positive / n_tokens if n_tokens and n_positive is not None else None
    level = {"auroc": 0.5, "share": share}
    return {h.label: level[h.chance] for h in HEADLINE if h.chance is not None}
