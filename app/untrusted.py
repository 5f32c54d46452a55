"""Run folders and user text are untrusted on a page: one bad run shows an error for that run and the rest of
the page still draws; names, questions and messages are escaped before Streamlit renders them as Markdown
(an `![x](http://host/pixel)` in a run name would otherwise make every viewer's browser fetch that URL)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

import streamlit as st

from app import state
from atwu_core.runs import RunReader, RunSnapshot

_MARKDOWN = re.compile(r"([\\`*_{}\[\]()<>#!|~$:])")  # what starts Markdown syntax; CommonMark escapes each


def md(text: object) -> str:
    """`text` as literal Markdown: the characters that open links, images, HTML, emphasis, code, headings,
    tables, Streamlit's `:colour[…]`/`:material/…:` and `$…$` backslash-escaped, so all of it shows as text."""
    return _MARKDOWN.sub(r"\\\1", str(text))


@contextlib.contextmanager
def isolated(run_dir: str | Path) -> Iterator[None]:
    """Draw one run; whatever its folder holds, a failure is an st.error naming the run and the page goes on."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - any file of any run folder may be crafted; the others still show
        st.error(f"Run {md(Path(run_dir).name)}: {md(err)}")


def snapshot(run_dir: str | Path) -> RunSnapshot | None:
    """The run's snapshot, parsing only the records appended since this process last read it; None (after an
    st.error naming the run and the file) when the folder cannot be read."""
    with isolated(run_dir):
        return RunReader(run_dir).snapshot(state.record_log(str(run_dir)))
    return None
