"""Shared fixtures of the Python package's tests (docs/python.md, docs/testing.md).
tools/test.sh runs them against build-test's libseq ($SEQC_LIBRARY); torch is
required, not skipped: the tests compare with PyTorch."""
import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "reference" / "fixtures"


@pytest.fixture
def root():
    return ROOT


def seqc_bin():
    """The seqc command beside the libseq in use (build-test/seqc), or $SEQC_BIN."""
    import seqc
    env = os.environ.get("SEQC_BIN")
    if env:
        return env
    d = pathlib.Path(seqc.library_path).resolve().parent
    for cand in (d / "seqc", d.parent / "bin" / "seqc"):
        if cand.exists():
            return str(cand)
    return None
