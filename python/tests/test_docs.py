"""Every ```python block of docs/python.md runs as written (from the source
tree's root, where the examples' paths are)."""
import os
import re

import pytest

from conftest import ROOT

BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "python.md").read_text(), re.S)


def test_there_are_examples():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_example(i, monkeypatch):
    monkeypatch.chdir(ROOT)
    exec(compile(BLOCKS[i], f"docs/python.md block {i}", "exec"), {"__name__": "__doc__"})
