"""The README's Python example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_python_example_runs(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert blocks, "the README has no Python example"
    monkeypatch.chdir(tmp_path)  # its run folder is relative
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("1 ") and printed[9].startswith("10 ")
    assert len(namespace["steps"]) == 10 and len(namespace["probs"][0]) == len(namespace["run"].samples[0].tokens)
    assert (tmp_path / "runs" / "atwu-demo" / "metrics.json").is_file()
