"""Records, loaders and the mapping from character spans to token labels.

One record format everywhere: a question, an answer, and the character spans of the answer that are
forget-specific (the ground truth that token weights are judged against). Every loader turns its input
into `Record`s and fails with a `DataError` that names the file, the line and what to fix.
"""

from __future__ import annotations

import bisect
import itertools
import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from atwu_core.files import ASSETS

PROMPT_TEMPLATE = "Question: {question}\nAnswer:"
IGNORE_INDEX = -100
# Input limits, checked before anything is tokenised: tokenising with offsets costs memory and time in proportion
# to the text (a 50 MB answer took 19 GB and 6 minutes), and no question or answer worth unlearning is this long.
MAX_TEXT_CHARS = 20_000  # per text field (question, answer, paraphrase, each perturbed answer, id)
MAX_LINE_BYTES = 4 * 2**20  # per JSONL line, checked before json.loads
MAX_FORGET_STRINGS = 256  # different forget strings per record (duplicates are dropped first)
MAX_STRING_MATCHES = 100_000  # their occurrences in one answer, all together


class DataError(ValueError):
    """Bad input data; the message says where and what to do."""


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    label: str = "forget"


@dataclass
class Record:
    id: str
    question: str
    answer: str
    forget_spans: list[Span] = field(default_factory=list)
    paraphrased_answer: str | None = None
    perturbed_answer: list[str] | None = None
    paraphrased_question: str | None = None  # TOFU's: facts are also checked on the answer to it

    def to_json(self) -> dict:
        out = asdict(self)
        return {k: v for k, v in out.items() if v is not None}


@dataclass
class Dataset:
    """A forget set (what to unlearn), a retain set (what to keep) and an optional holdout set."""

    name: str
    forget: list[Record]
    retain: list[Record]
    holdout: list[Record] = field(default_factory=list)


# --------------------------------------------------------------------------------------------- parsing


def _where(source: str, line: int | None, row: int | None = None) -> str:
    """Where a record is: a JSONL line, or a 1-based row of a JSON list."""
    if line is not None:
        return f"{source}, line {line}"
    return f"{source}, row {row}" if row is not None else source


def _check_text(text: str, name: str, where: str) -> None:
    """Refuse text that would make tokenising unbounded, or that no tokenizer or UTF-8 file can hold."""
    if len(text) > MAX_TEXT_CHARS:
        raise DataError(
            f"{where}: field '{name}' is {len(text)} characters, over the limit of {MAX_TEXT_CHARS}; "
            "shorten it or split the record."
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise DataError(
            f"{where}: field '{name}' has an invalid character at position {err.start} "
            f"({text[err.start]!r}, a lone surrogate escape); replace it with the character it stands for."
        ) from None


def record_from_dict(
    obj: object, source: str, line: int | None = None, index: int = 0, row: int | None = None
) -> Record:
    """Validate one JSON object and turn it into a Record (spans checked against the answer).

    `line` (JSONL) or `row` (1-based, a JSON list) says where the record is in `source`, for error messages.
    """
    where = _where(source, line, row)
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object with 'question' and 'answer', got {type(obj).__name__}.")
    for key in ("question", "answer"):
        if key not in obj:
            raise DataError(f"{where}: missing field '{key}'. Every record needs 'question' and 'answer' strings.")
        if not isinstance(obj[key], str) or not obj[key].strip():
            raise DataError(f"{where}: field '{key}' must be a non-empty string.")
        _check_text(obj[key], key, where)
    answer = obj["answer"]
    if "forget_spans" in obj and "forget_strings" in obj:
        raise DataError(f"{where}: give either 'forget_spans' or 'forget_strings', not both.")
    spans = (
        _spans_from_strings(obj["forget_strings"], answer, where)
        if "forget_strings" in obj
        else _spans_from_dicts(obj.get("forget_spans", []), answer, where)
    )
    if isinstance(obj.get("subject"), str) and obj["subject"].strip():
        spans = _with_subject(spans, obj["subject"], answer)
    perturbed = obj.get("perturbed_answer")
    if isinstance(perturbed, str):
        perturbed = [perturbed]
    if perturbed is not None and not (isinstance(perturbed, list) and all(isinstance(p, str) for p in perturbed)):
        raise DataError(f"{where}: 'perturbed_answer' must be a string or a list of strings.")
    paraphrased = obj.get("paraphrased_answer")
    if paraphrased is not None and not isinstance(paraphrased, str):
        raise DataError(f"{where}: 'paraphrased_answer' must be a string.")
    question2 = obj.get("paraphrased_question")
    if question2 is not None and not isinstance(question2, str):
        raise DataError(f"{where}: 'paraphrased_question' must be a string.")
    record_id = str(obj.get("id", f"{Path(source).stem}-{index}"))
    for name, text in [("paraphrased_answer", paraphrased), ("paraphrased_question", question2), ("id", record_id)] + [
        (f"perturbed_answer[{k}]", p) for k, p in enumerate(perturbed or [])
    ]:
        if text is not None:
            _check_text(text, name, where)
    return Record(
        id=record_id,
        question=obj["question"],
        answer=answer,
        forget_spans=spans,
        paraphrased_answer=paraphrased,
        perturbed_answer=perturbed,
        paraphrased_question=question2 or None,
    )


def _spans_from_dicts(raw: object, answer: str, where: str) -> list[Span]:
    if not isinstance(raw, list):
        raise DataError(f"{where}: 'forget_spans' must be a list of {{'start', 'end', 'label'}} objects.")
    spans = []
    for k, item in enumerate(raw):
        if not isinstance(item, dict) or not all(_is_int(item.get(key)) for key in ("start", "end")):
            raise DataError(
                f"{where}: forget_spans[{k}] needs integer 'start' and 'end' (character offsets into the answer)."
            )
        start, end = item["start"], item["end"]
        if not 0 <= start < end <= len(answer):
            raise DataError(
                f"{where}: forget_spans[{k}] = [{start}, {end}) lies outside the answer (length {len(answer)}); "
                "offsets are 0-based characters into 'answer', end exclusive."
            )
        spans.append(Span(start, end, str(item.get("label", "forget"))))
    spans.sort(key=lambda s: s.start)
    for a, b in itertools.pairwise(spans):
        if b.start < a.end:
            raise DataError(f"{where}: forget_spans [{a.start}, {a.end}) and [{b.start}, {b.end}) overlap; merge them.")
    return spans


def _with_subject(spans: list[Span], subject: str, answer: str) -> list[Span]:
    """TOFU's `subject` field (the record's author, or the topic) as `name` spans wherever it occurs in the
    answer, beside the given spans (a given span wins where they overlap)."""
    found, start = [], answer.find(subject)
    while start >= 0:
        found.append(Span(start, start + len(subject), "name"))
        start = answer.find(subject, start + len(subject))
    free = [n for n in found if not any(n.start < s.end and s.start < n.end for s in spans)]
    return sorted(spans + free, key=lambda s: s.start)


def _is_int(value: object) -> bool:
    """An integer that is not a bool (JSON true/false would otherwise pass as offsets 1/0)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _spans_from_strings(raw: object, answer: str, where: str) -> list[Span]:
    """The answer's characters covered by any occurrence of any forget string, as spans; linear in the answer
    plus the occurrences (a difference array, not re-marking each occurrence), with both counts capped."""
    if not isinstance(raw, list) or not all(isinstance(s, str) and s for s in raw):
        raise DataError(f"{where}: 'forget_strings' must be a list of non-empty strings.")
    strings = list(dict.fromkeys(raw))
    if len(strings) > MAX_FORGET_STRINGS:
        raise DataError(
            f"{where}: {len(strings)} different forget strings, over the limit of {MAX_FORGET_STRINGS}; "
            "give 'forget_spans' (character offsets) instead."
        )
    depth = [0] * (len(answer) + 1)  # +1 where an occurrence starts, -1 where it ends
    matches = 0
    for text in strings:
        start = answer.find(text)
        if start < 0:
            raise DataError(f"{where}: forget string {_preview(text)} does not occur in the answer.")
        while start >= 0:
            depth[start] += 1
            depth[start + len(text)] -= 1
            matches += 1
            if matches > MAX_STRING_MATCHES:
                raise DataError(
                    f"{where}: the forget strings occur more than {MAX_STRING_MATCHES} times in the answer; "
                    "give 'forget_spans' (character offsets) instead."
                )
            start = answer.find(text, start + 1)
    spans, opened = [], None
    for k, covering in enumerate(itertools.accumulate(depth)):  # how many occurrences cover character k
        if covering and opened is None:
            opened = k
        elif not covering and opened is not None:
            spans.append(Span(opened, k))
            opened = None
    return spans


def _preview(text: str, limit: int = 60) -> str:
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"


# --------------------------------------------------------------------------------------------- loaders


def _not_utf8(where: str, raw: bytes, err: UnicodeDecodeError, line_start: int = 0) -> DataError:
    """The error for undecodable bytes: the place, the offending byte and its position in its line."""
    bad = raw[err.start : err.start + 1]
    return DataError(
        f"{where}: not UTF-8 text (byte {err.start - line_start + 1} of the line is {bad!r}); save it as UTF-8."
    )


def _decode_file(path: Path) -> str:
    """A whole file as text (a UTF-8 BOM allowed); a decoding error names the line."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line_no = raw.count(b"\n", 0, err.start) + 1
        raise _not_utf8(f"{path}, line {line_no}", raw, err, raw.rfind(b"\n", 0, err.start) + 1) from None


def _parse_json(text: str, source: str, line: int | None = None) -> object:
    """json.loads with its failures (syntax, absurd nesting) as DataErrors naming the file and line.

    `line`: the line of `source` that `text` is (JSONL); None when `text` is the whole file.
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        where = f"{source}, line {(line or 1) + err.lineno - 1}"
        raise DataError(f"{where}, column {err.colno}: malformed JSON ({err.msg}).") from None
    except RecursionError:
        raise DataError(f"{_where(source, line)}: JSON nested too deeply; a record is one flat object.") from None


def _jsonl_lines(path: Path):
    """(line number, text) of a JSONL file. Read as bytes: only a newline ends a line (a stray carriage return
    inside a record stays in it, so error columns are right), a leading UTF-8 BOM is dropped, and no line is
    read past MAX_LINE_BYTES."""
    with path.open("rb") as fh:
        line_no = 0
        while raw := fh.readline(MAX_LINE_BYTES + 1):
            line_no += 1
            where = f"{path}, line {line_no}"
            if len(raw) > MAX_LINE_BYTES:
                raise DataError(
                    f"{where}: longer than {MAX_LINE_BYTES} bytes; a record's texts are limited to "
                    f"{MAX_TEXT_CHARS} characters each."
                )
            try:
                yield line_no, raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError as err:
                raise _not_utf8(where, raw, err) from None


def load_jsonl(path: str | Path) -> list[Record]:
    """Load a JSONL file of records; errors name the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file.")
    records, lines = [], []
    for line_no, line in _jsonl_lines(path):
        if not line.strip():
            continue
        obj = _parse_json(line.rstrip("\r\n"), str(path), line_no)
        records.append(record_from_dict(obj, str(path), line_no, len(records)))
        lines.append(f"line {line_no}")
    _check_unique_ids(records, str(path), lines)
    return records


def load_tofu_json(path: str | Path) -> list[Record]:
    """Load a TOFU-format JSON list of {question, answer, ...}; a row's `subject` becomes `name` spans."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file.")
    data = _parse_json(_decode_file(path), str(path))
    if isinstance(data, dict):  # some exports wrap the rows
        data = data.get("data", data.get("rows"))
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of {{'question', 'answer'}} objects.")
    records = [record_from_dict(obj, str(path), index=k, row=k + 1) for k, obj in enumerate(data)]
    _check_unique_ids(records, str(path), [f"row {k + 1}" for k in range(len(records))])
    return records


def load_hub_tofu(name: str) -> list[Record]:
    """`datasets.load_dataset("locuslab/TOFU", name)`: needs a reachable hub, or HF_HUB_OFFLINE=1 and a cached copy."""
    import datasets
    from huggingface_hub import constants

    from atwu_core.hub import hub_reachable

    if not constants.HF_HUB_OFFLINE and not hub_reachable():
        raise DataError(
            f"could not load TOFU split '{name}': the hub ({constants.ENDPOINT}) cannot be reached. Offline, point "
            "--data at a TOFU JSON file, or set HF_HUB_OFFLINE=1 to use a cached download."
        )
    try:
        rows = datasets.load_dataset("locuslab/TOFU", name, split="train")
    except Exception as err:  # network, unknown split name, ...: all become one DataError
        raise DataError(
            f"could not load TOFU split '{name}' from the hub ({err}). "
            "Offline, point --data at a TOFU JSON file instead."
        ) from None
    return [record_from_dict(dict(row), f"locuslab/TOFU:{name}", index=k, row=k + 1) for k, row in enumerate(rows)]


def _check_unique_ids(records: list[Record], source: str, places: list[str]) -> None:
    """Ids key weights and metrics; `places[k]` says where record k is ("line 3", "row 3")."""
    seen: dict[str, str] = {}
    for rec, place in zip(records, places, strict=True):
        if rec.id in seen:
            raise DataError(
                f"{source}: record id {rec.id!r} appears twice ({seen[rec.id]} and {place}); ids must be unique."
            )
        seen[rec.id] = place


def load_dataset_dir(path: str | Path) -> Dataset:
    """A dataset folder: forget.jsonl and retain.jsonl, optional holdout.jsonl."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path}: not a folder. A dataset is a folder with forget.jsonl and retain.jsonl.")
    for required in ("forget.jsonl", "retain.jsonl"):
        if not (path / required).is_file():
            raise DataError(f"{path}: missing {required}. A dataset folder needs forget.jsonl and retain.jsonl.")
    forget = load_jsonl(path / "forget.jsonl")
    if not forget:
        raise DataError(f"{path / 'forget.jsonl'}: the forget set is empty; add at least one record.")
    retain = load_jsonl(path / "retain.jsonl")
    holdout = load_jsonl(path / "holdout.jsonl") if (path / "holdout.jsonl").is_file() else []
    return Dataset(name=path.name, forget=forget, retain=retain, holdout=holdout)


def is_spans_dir(path: Path) -> bool:
    """A Hugging Face `datasets` folder (`save_to_disk`), the format of the published TOFU span annotations."""
    return path.is_dir() and (path / "dataset_info.json").is_file() and (path / "state.json").is_file()


def load_spans_dir(path: str | Path) -> list[Record]:
    """A `datasets` folder whose rows have `question`, `answer` and `target_words`, a JSON string of
    `[{"word", "start", "end"}]` character offsets into the answer (the TOFU annotations of arXiv 2506.03142):
    each target word becomes a `fact` span (overlapping ones, e.g. "Kazakhstan" inside "Kazakhstan Echoes", as their
    union). Annotations whose text does not match the answer at their offsets are dropped with one warning counting
    them. Arrow files only: nothing is unpickled."""
    import datasets

    path = Path(path)
    rows = datasets.load_from_disk(str(path))
    missing = {"question", "answer", "target_words"} - set(rows.column_names)
    if missing:
        raise DataError(f"{path}: a span folder's rows need {sorted(missing)} (has {rows.column_names}).")
    records, dropped = [], 0
    for k, row in enumerate(rows):
        where = f"{path}, row {k + 1}"
        words = _parse_json(row["target_words"] or "[]", where)
        if not isinstance(words, list):
            raise DataError(f"{where}: 'target_words' must be a JSON list of {{'word', 'start', 'end'}} objects.")
        matched = [w for w in words if _matches(w, row["answer"])]
        dropped += len(words) - len(matched)
        obj = {k: v for k, v in row.items() if k not in ("target_words", "common_words")}
        spans = [{"start": a, "end": b, "label": "fact"} for a, b in _union(matched)]
        records.append(record_from_dict({**obj, "forget_spans": spans}, str(path), index=k, row=k + 1))
    if dropped:
        warnings.warn(
            f"{path}: dropped {dropped} target_words annotation(s) whose text does not match the answer at their "
            "offsets; their records are kept with the remaining spans.",
            stacklevel=2,
        )
    _check_unique_ids(records, str(path), [f"row {k + 1}" for k in range(len(records))])
    return records


def _matches(word: object, answer: str) -> bool:
    """A target_words entry whose `word` is the answer's text at its [start, end) offsets."""
    if not (isinstance(word, dict) and _is_int(word.get("start")) and _is_int(word.get("end"))):
        return False
    return 0 <= word["start"] < word["end"] <= len(answer) and answer[word["start"] : word["end"]] == word.get("word")


def _union(words: list[dict]) -> list[tuple[int, int]]:
    """The [start, end) ranges of the words, overlapping ones merged."""
    out: list[tuple[int, int]] = []
    for start, end in sorted((w["start"], w["end"]) for w in words):
        if out and start < out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


UTILITY_SETS = ("real_authors_perturbed", "world_facts_perturbed", "retain_perturbed")  # TOFU's file/split names


def load_utility_sets(spec: str) -> dict[str, list[Record]]:
    """TOFU's model-utility sets by name: 'tofu' loads them from the hub; a folder holds them as TOFU JSON files
    (`real_authors_perturbed.json`, `world_facts_perturbed.json`, optional `retain_perturbed.json`; without it the
    job's retain set is used)."""
    if spec == "tofu":
        return {name: load_hub_tofu(name) for name in UTILITY_SETS}
    folder = Path(spec)
    if not folder.is_dir():
        raise DataError(f"utility_data {spec!r}: not 'tofu' or a folder of TOFU *_perturbed.json files.")
    for required in UTILITY_SETS[:2]:
        if not (folder / f"{required}.json").is_file():
            raise DataError(f"{folder}: missing {required}.json (TOFU's split of that name, as a JSON list).")
    files = {name: folder / f"{name}.json" for name in UTILITY_SETS}
    return {name: load_tofu_json(path) for name, path in files.items() if path.is_file()}


def demo_data_dir() -> Path:
    return ASSETS / "demo_world"


def load_data(spec: str, retain_spec: str | None = None) -> Dataset:
    """Resolve a data spec: 'demo', a dataset folder, a TOFU JSON file (with `retain_spec` for its
    retain set), or 'tofu:<forget split>[,<retain split>]' from the hub."""
    if spec == "demo":
        return load_dataset_dir(demo_data_dir())
    if spec.startswith("tofu:"):
        names = spec[len("tofu:") :].split(",")
        forget_name = names[0]
        retain_name = (
            names[1]
            if len(names) > 1
            else "retain" + str(100 - int("".join(c for c in forget_name if c.isdigit()) or 10))
        )
        return Dataset(name=spec, forget=load_hub_tofu(forget_name), retain=load_hub_tofu(retain_name))
    path = Path(spec)
    if is_spans_dir(path):
        forget = load_spans_dir(path)
        if not forget:
            raise DataError(f"{path}: the forget set is empty; add at least one record.")
        return Dataset(name=path.name, forget=forget, retain=_load_file(Path(retain_spec)) if retain_spec else [])
    if path.is_dir():
        return load_dataset_dir(path)
    if path.suffix in LOADERS:
        forget = _load_file(path)
        if not forget:
            raise DataError(f"{path}: the forget set is empty; add at least one record.")
        return Dataset(name=path.stem, forget=forget, retain=_load_file(Path(retain_spec)) if retain_spec else [])
    raise DataError(
        f"{spec!r}: not 'demo', a dataset folder (forget.jsonl + retain.jsonl), a `datasets` folder with "
        "target_words, a TOFU .json file or a .jsonl file."
    )


LOADERS = {".json": load_tofu_json, ".jsonl": load_jsonl}


def _load_file(path: Path) -> list[Record]:
    if path.suffix not in LOADERS:
        raise DataError(f"{path}: a retain set is a TOFU .json or a .jsonl file.")
    return LOADERS[path.suffix](path)


def save_dataset_dir(dataset: Dataset, path: str | Path) -> None:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for split in ("forget", "retain", "holdout"):
        records = getattr(dataset, split)
        if split == "holdout" and not records:
            continue
        lines = "".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in records)
        (path / f"{split}.jsonl").write_text(lines, encoding="utf-8")


# --------------------------------------------------------------------------------------------- encoding


@dataclass
class EncodedSample:
    """A record tokenised as prompt + answer, with one entry per answer token in the `answer_*` lists.

    `input_ids[:prompt_length]` is exactly the prompt a model sees at generation time, and
    `labels` is IGNORE_INDEX everywhere but on answer tokens (the only tokens trained and scored).
    """

    record_id: str
    input_ids: list[int]
    labels: list[int]
    prompt_length: int
    answer_tokens: list[str]
    answer_offsets: list[tuple[int, int]]  # character range of each answer token inside `answer`
    span_mask: list[bool]  # ground truth: the token overlaps a forget span
    has_ground_truth: bool

    @property
    def answer_token_ids(self) -> list[int]:
        return self.input_ids[self.prompt_length :]

    @property
    def content_mask(self) -> list[bool]:
        """True on answer tokens that cover answer text; False on EOS and other special tokens (zero-width offsets)."""
        return [e > s for s, e in self.answer_offsets]


def format_prompt(question: str, tokenizer=None, chat_template: bool = False) -> str:
    if chat_template:
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise DataError(
                "chat_template=True but the tokenizer has no chat template; use the plain Question/Answer format."
            )
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
    return PROMPT_TEMPLATE.format(question=question)


def encode_record(record: Record, tokenizer, max_length: int = 256, chat_template: bool = False) -> EncodedSample:
    """Tokenise prompt + answer (+ EOS) and label each answer token by character overlap with the spans."""
    if not getattr(tokenizer, "is_fast", False):
        raise DataError(
            "span labelling needs a fast tokenizer (offset mappings); load the model's tokenizer with use_fast=True."
        )
    prompt = format_prompt(record.question, tokenizer, chat_template)
    sep = "" if chat_template else " "
    answer_start = len(prompt) + len(sep)
    text = prompt + sep + record.answer
    enc = tokenizer(text, add_special_tokens=not chat_template, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    # a token is an answer token when it ends inside the answer (BPE merges the separating space in)
    first = next((k for k, (s, e) in enumerate(offsets) if e > answer_start and e > s), None)
    if first is None:
        raise DataError(f"record {record.id!r}: the answer produced no tokens.")
    if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
        ids.append(tokenizer.eos_token_id)
        offsets.append((len(text), len(text)))
    if len(ids) > max_length:
        if first >= max_length - 1:
            raise DataError(f"record {record.id!r}: the prompt alone is {first} tokens, over max_length={max_length}.")
        warnings.warn(f"record {record.id!r}: {len(ids)} tokens, truncated to max_length={max_length}.", stacklevel=2)
        ids, offsets = ids[:max_length], offsets[:max_length]
    answer_offsets = [(max(s - answer_start, 0), max(e - answer_start, 0)) for s, e in offsets[first:]]
    span_mask = [k is not None for k in span_index(answer_offsets, record.forget_spans)]
    if record.forget_spans and not any(span_mask):
        warnings.warn(
            f"record {record.id!r}: max_length={max_length} cut off every ground-truth span; it counts as a sample "
            "without ground truth (raise max_length to keep it).",
            stacklevel=2,
        )
    answer_tokens = [
        _readable(tokenizer, tid, record.answer, off) for tid, off in zip(ids[first:], answer_offsets, strict=True)
    ]
    return EncodedSample(
        record_id=record.id,
        input_ids=ids,
        labels=[IGNORE_INDEX] * first + ids[first:],
        prompt_length=first,
        answer_tokens=answer_tokens,
        answer_offsets=answer_offsets,
        span_mask=span_mask,
        has_ground_truth=any(span_mask),
    )


def span_index(offsets: list[tuple[int, int]], spans: list[Span]) -> list[int | None]:
    """For each token's (start, end), the index of the first span it overlaps, else None. Spans that are
    disjoint (as the loaders give them) sorted by start: the spans a token overlaps are the last ones starting
    before its end, so one binary search per token, not a pass over every span."""
    order = sorted(range(len(spans)), key=lambda i: spans[i].start)
    if any(spans[a].end > spans[b].start for a, b in itertools.pairwise(order)):  # overlapping, built by hand
        return [next((i for i, sp in enumerate(spans) if s < sp.end and e > sp.start), None) for s, e in offsets]
    starts = [spans[i].start for i in order]
    out: list[int | None] = []
    for s, e in offsets:
        k = bisect.bisect_left(starts, e) - 1  # the last span starting before e
        hits = []
        while k >= 0 and spans[order[k]].end > s:  # a token may cover several spans: walk back over them
            hits.append(order[k])
            k -= 1
        out.append(min(hits) if hits else None)
    return out


def _readable(tokenizer, token_id: int, answer: str, offset: tuple[int, int]) -> str:
    """The answer text a token covers (readable for any tokenizer), or its special-token name."""
    start, end = offset
    if end > start:
        return answer[start:end]
    return tokenizer.convert_ids_to_tokens(token_id)


def encode_records(
    records: list[Record], tokenizer, max_length: int = 256, chat_template: bool = False
) -> list[EncodedSample]:
    return [encode_record(r, tokenizer, max_length, chat_template) for r in records]
