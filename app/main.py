"""ATWU Explorer: `streamlit run app/main.py`. Navigation and the sidebar summary of the shared state."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `streamlit run` puts app/ on the path, not the repository root
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from app import session, state  # noqa: E402
from app.untrusted import md  # noqa: E402

PAGES = Path(__file__).resolve().parent / "app_pages"  # not "pages/": that name turns on Streamlit's v1 multipage mode


RUN = PAGES / "run.py"


def home() -> None:
    """The root URL opens the Run page at /run (the default page of st.navigation has no path of its own, so
    Run is not the default: every page keeps a URL), carrying the link's query string along."""
    st.switch_page(RUN, query_params=st.query_params.to_dict())


def main() -> None:
    st.set_page_config(page_title="ATWU Explorer", page_icon=":material/cleaning_services:", layout="wide")
    page = st.navigation(
        [
            st.Page(home, title="ATWU Explorer", url_path="home", default=True, visibility="hidden"),
            st.Page(PAGES / "model.py", title="Model", icon=":material/memory:", url_path="model"),
            st.Page(PAGES / "data.py", title="Data", icon=":material/description:", url_path="data"),
            st.Page(RUN, title="Run", icon=":material/play_circle:", url_path="run"),
            st.Page(PAGES / "compare.py", title="Compare", icon=":material/insights:", url_path="compare"),
            st.Page(PAGES / "query.py", title="Query", icon=":material/chat:", url_path="query"),
            st.Page(PAGES / "runs.py", title="Runs", icon=":material/folder_open:", url_path="runs"),
        ]
    )
    with st.sidebar:
        st.caption(f"Model: **{md(session.model_spec())}**")
        st.caption(f"Data: **{md(session.data_label())}**")
        job, waiting = state.jobs().running(), len(state.jobs().waiting())
        st.caption(
            (f"Job: **running** ({md(job.run_dir.name)})" if job else "Job: idle")
            + (f" · {waiting} queued" if waiting else "")
        )
    page.run()


main()
