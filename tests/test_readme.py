"""The README's Python example (the drop-in TorchRL loop) stays runnable."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README has no python example"
    monkeypatch.chdir(tmp_path)  # anything it writes stays out of the checkout
    for block in blocks:
        exec(compile(block, str(README), "exec"), {"__name__": "readme_example"})
