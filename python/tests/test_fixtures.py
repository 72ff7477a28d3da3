"""The PyTorch reference fixtures (tests/reference/fixtures/*/case.txt, as the C
test test_torch runs them through `seqc run`) through the Python API: compiled
with the fixture's weights file, run on its inputs, compared with its outputs
and final states."""
import numpy as np
import pytest

import seqc
from conftest import FIXTURES, ROOT

CASES = sorted(p.parent.name for p in FIXTURES.glob("*/case.txt"))


def parse_case(d):
    case = {"in": {}, "out": {}, "dims": None, "entry": None}
    for line in (d / "case.txt").read_text().splitlines():
        if not line.strip():
            continue
        key, _, rest = line.partition(" ")
        if key in ("in", "out"):
            name, _, f = rest.partition("=")
            case[key][name] = np.load(d / f)
        elif key in ("seq",):
            case["seq"] = ROOT / rest
        elif key == "weights":
            case["weights"] = d / rest
        elif key == "tol":
            case["tol"] = float(rest)
        else:
            case[key] = rest
    return case


def test_there_are_cases():
    assert len(CASES) >= 40


@pytest.mark.parametrize("name", CASES)
def test_fixture(name):
    c = parse_case(FIXTURES / name)
    m = seqc.compile(c["seq"], dims=c["dims"], entry=c["entry"], weights=c["weights"])
    inputs, state = {}, {}
    lengths = c["in"].pop("lengths", None)
    for k, v in c["in"].items():
        if k in m.state_names:
            state[k] = v.astype(np.float32)
        else:
            spec = next(s for s in m.inputs if s.name == k)
            inputs[k] = v.astype(np.int32) if spec.is_int else v.astype(np.float32)
    assert len(inputs) == len(m.inputs)
    y, final = m(inputs, lengths=lengths, state=state or None, return_state=True)
    outs = y if isinstance(y, tuple) else (y,)
    got = dict(zip([s.name for s in m.outputs], outs), **final)
    assert c["out"], name
    for k, want in c["out"].items():
        assert k in got, f"{name}: no output or state {k}"
        np.testing.assert_allclose(got[k], want, rtol=0, atol=c["tol"] * 10, err_msg=f"{name}: {k}")
