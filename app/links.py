"""Shareable URLs: the run, the sample, the view (and Compare's runs) live in the page's query string, so a
copied link or a browser refresh opens the same view for anyone on the server. Runs are named by their folder
name only, and only folders under the runs root are ever opened from a URL."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import streamlit as st

from app.untrusted import md
from atwu_core.run_table import run_id


def run_from_url(run_dirs: Iterable[str], param: str = "run") -> str | None:
    """The run folder the URL names (`?run=<folder name>`), if it is one of `run_dirs`; a name that is not
    says so once, and the page goes on with its own choice."""
    wanted = st.query_params.get(param)
    if not wanted:
        return None
    found = next((d for d in run_dirs if run_id(d) == wanted), None)
    if found is None:
        st.warning(f"No run named {md(repr(wanted))} here (the link's run was deleted or lives on another server).")
    return found


def runs_from_url(run_dirs: Iterable[str], param: str = "runs") -> list[str] | None:
    """The run folders `?runs=a,b` names, in its order (unknown names skipped); None without the parameter."""
    wanted = st.query_params.get(param)
    if not wanted:
        return None
    by_id = {run_id(d): d for d in run_dirs}
    return [by_id[name] for name in wanted.split(",") if name in by_id]


def wanted(param: str, choices: Sequence, to_choice: Callable[[str], object] = str) -> int | None:
    """The index in `choices` of the value the URL's `param` names, for a widget's starting `index` (None: the
    URL names none of them; once the widget has state, its own value wins and `show` writes it back)."""
    value = st.query_params.get(param)
    choice = to_choice(value) if value else None
    return list(choices).index(choice) if choice in list(choices) else None


def show(**params: str | None) -> None:
    """Write the shown view into the URL (None removes a parameter); unchanged values are not rewritten."""
    for name, value in params.items():
        if value is None:
            if name in st.query_params:
                del st.query_params[name]
        elif st.query_params.get(name) != value:
            st.query_params[name] = value
