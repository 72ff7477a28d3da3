"""Errors (shapes, dtypes, non-contiguous inputs, weights), zero copy (the
pointers handed to C), threads on one module with the GIL released, and an
AOT shared object through seqc.load_so."""
import ctypes
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

import seqc
from seqc import _lib
from conftest import ROOT, seqc_bin


def lstm(I=4, H=6, seed=0, **kw):
    m = seqc.compile(ROOT / "examples/lstm.seq", dims={"I": I, "H": H}, **kw)
    rng = np.random.default_rng(seed)
    w = {p.name: (rng.standard_normal(p.shape) * 0.3).astype(np.float32) for p in m.params}
    m.load_weights(w)
    return m, w


def x_of(B=2, T=5, I=4, seed=1):
    return np.random.default_rng(seed).standard_normal((B, T, I)).astype(np.float32)


# ---- errors ----------------------------------------------------------------------------
def test_compile_error_has_location_line_and_caret(tmp_path):
    f = tmp_path / "bad.seq"
    f.write_text("cell C(H) {\n  input x: [H]\n  output y: [H]\n  step {\n    y = x * q\n  }\n}\n")
    with pytest.raises(seqc.CompileError) as e:
        seqc.compile(f, dims={"H": 2})
    text = str(e.value)
    assert f"{f}:5:13: error: unknown name 'q'" in text
    assert "\n      y = x * q\n              ^" in text
    d = e.value.diagnostics[0]
    assert (d.line, d.col, d.severity) == (5, 13, "error")


def test_compile_errors_of_options():
    with pytest.raises(seqc.CompileError, match="dims must look like"):
        seqc.compile(ROOT / "examples/lstm.seq", dims="I4")
    with pytest.raises(seqc.CompileError, match="cannot open"):
        seqc.compile(ROOT / "examples/no_such.seq")
    with pytest.raises(seqc.CompileError, match="unknown backend"):
        seqc.compile(ROOT / "examples/lstm.seq", dims={"I": 2, "H": 2}, backend="tpu")


def test_weight_errors_name_the_weight():
    m = seqc.compile(ROOT / "examples/lstm.seq", dims={"I": 4, "H": 6})
    with pytest.raises(seqc.WeightError, match="parameter weight_ih is not bound"):
        m(x_of())
    full = {p.name: np.zeros(p.shape, np.float32) for p in m.params}
    missing = dict(full)
    del missing["bias_hh"]
    with pytest.raises(seqc.WeightError, match=r"missing weight bias_hh \(shape \[24\]\)"):
        m.load_weights(missing)
    bad = dict(full, weight_hh=np.zeros((24, 5), np.float32))
    with pytest.raises(seqc.WeightError, match=r"weight_hh has shape \[24, 5\].*\[24, 6\]"):
        m.load_weights(bad)
    with pytest.raises(seqc.WeightError, match="unexpected weights: extra"):
        m.load_weights(dict(full, extra=np.zeros(3, np.float32)))
    m.load_weights(dict(full, extra=np.zeros(3, np.float32)), strict=False)
    assert m(x_of()).shape == (2, 5, 6)
    with pytest.raises(seqc.WeightError, match="cannot open|No such"):
        m.load_weights("/nonexistent.safetensors")


def test_bad_shapes_and_dtypes():
    m, _ = lstm()
    x = x_of()
    with pytest.raises(ValueError, match=r"input x: shape \[2, 5, 3\], expected \[B, T, 4\]"):
        m(x[:, :, :3].copy())
    with pytest.raises(ValueError, match=r"expected \[B, T, 4\]"):
        m(x[0])
    with pytest.raises(TypeError, match="dtype float64, expected float32"):
        m(x.astype(np.float64))
    with pytest.raises(TypeError, match="torch.float64, expected torch.float32"):
        m(torch.from_numpy(x).double())
    with pytest.raises(TypeError, match="takes 1 input"):
        m(x, x)
    with pytest.raises(ValueError, match=r"state h: shape \[3, 6\], expected \[2, 6\]"):
        m(x, state={"h": np.zeros((3, 6), np.float32)})
    with pytest.raises(ValueError, match="no state named z"):
        m(x, state={"z": np.zeros((2, 6), np.float32)})
    with pytest.raises(ValueError, match=r"lengths: values must lie in \[0, 5\]"):
        m(x, lengths=[6, 1])
    with pytest.raises(ValueError, match=r"lengths: shape \[3\], expected \[2\]"):
        m(x, lengths=[1, 2, 3])
    with pytest.raises(ValueError, match=r"expected \[B, 4\]"):
        m.step(x)
    # Errors from the compiled code: a negative batch reaches C via step's shape.
    with pytest.raises(ValueError, match=r"expected \[B, T, 4\]"):
        m(np.zeros((0, 5), np.float32))


def test_token_out_of_range_is_run_error():
    m = seqc.compile("cell E(V, D) {\n  param emb: [V, D]\n  input x: int\n  output y: [D]\n"
                     "  step {\n    y = emb[x]\n  }\n}\n", dims={"V": 5, "D": 3})
    m.load_weights({"emb": np.arange(15, dtype=np.float32).reshape(5, 3)})
    y = m(np.array([[0, 4]], np.int64))  # int64 copied to int32
    np.testing.assert_array_equal(y[0, 1], [12, 13, 14])
    with pytest.raises(seqc.RunError, match="token"):
        m(np.array([[0, 5]], np.int32))
    with pytest.raises(TypeError, match="integer dtype"):
        m(np.array([[0.0, 1.0]], np.float32))


def test_non_contiguous_inputs_are_copied_and_equal():
    m, _ = lstm()
    x = x_of()
    xt = np.ascontiguousarray(x.transpose(1, 0, 2)).transpose(1, 0, 2)  # same values, strided
    assert not xt.flags.c_contiguous
    np.testing.assert_array_equal(m(xt), m(x))
    tt = torch.from_numpy(np.ascontiguousarray(x.transpose(1, 0, 2))).transpose(0, 1)
    assert not tt.is_contiguous()
    np.testing.assert_array_equal(m(tt).numpy(), m(x))


# ---- zero copy ---------------------------------------------------------------------------
def test_contiguous_float32_is_not_copied(monkeypatch):
    seen = []
    # The functions a module calls (taken when it is made): _lib.raw's.
    real_fwd, real_step = _lib.raw.seq_module_forward, _lib.raw.seq_module_step

    def fwd(h, B, T, ins, lengths, sin, outs, sout):
        seen.append((ins[0], sin[0] if sin else None, outs[0]))
        return real_fwd(h, B, T, ins, lengths, sin, outs, sout)

    def stp(h, B, ins, sin, outs, sout):
        seen.append((ins[0], sin[0] if sin else None, outs[0]))
        return real_step(h, B, ins, sin, outs, sout)

    monkeypatch.setattr(_lib.raw, "seq_module_forward", fwd)
    monkeypatch.setattr(_lib.raw, "seq_module_step", stp)
    m, _ = lstm()
    x = x_of()
    h = np.ones((2, 6), np.float32)
    y = m(x, state={"h": h})
    assert seen[-1][:2] == (x.ctypes.data, h.ctypes.data)
    assert seen[-1][2] == y.ctypes.data  # written in place, returned as is
    xt, ht = torch.from_numpy(x), torch.from_numpy(h)
    y = m(xt, state={"h": ht})
    assert seen[-1] == (xt.data_ptr(), ht.data_ptr(), y.data_ptr())
    x0 = torch.randn(2, 4)
    y0, _ = m.step(x0, {"h": ht})
    assert seen[-1] == (x0.data_ptr(), ht.data_ptr(), y0.data_ptr())
    # Strided: a copy, so another pointer.
    xs = x_of(T=10)[:, ::2]
    m(xs)
    assert seen[-1][0] != xs.ctypes.data


# ---- threads -------------------------------------------------------------------------------
def test_two_threads_one_module():
    m, _ = lstm(I=16, H=32)
    xs = [x_of(B=3, T=60, I=16, seed=s) for s in range(2)]
    want = [m(x, return_state=True) for x in xs]
    errors = []

    def work(i):
        try:
            for _ in range(40):
                y, st = m(xs[i], return_state=True)
                assert np.array_equal(y, want[i][0]) and np.array_equal(st["c"], want[i][1]["c"])
                y_t, st = m.step(xs[i][:, 0])
                assert np.array_equal(y_t, want[i][0][:, 0]) or np.allclose(
                    y_t, want[i][0][:, 0], atol=1e-6)
                with pytest.raises(ValueError):
                    m(xs[i], lengths=[1, 2, 99])
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert errors == []


def test_the_gil_is_released_while_compiled_code_runs():
    m, _ = lstm(I=64, H=256)
    # A call long enough to see a stall in (50 ms: T = 3000 takes about that
    # on a 3.7 GHz Xeon, 100 ms on slower machines): longer sequences until it is.
    T = 3000
    while True:
        x = x_of(B=1, T=T, I=64)
        t0 = time.perf_counter()
        m(x)
        call = time.perf_counter() - t0
        if call > 0.05 or T >= 96000:
            break
        T *= 2
    done = threading.Event()
    th = threading.Thread(target=lambda: (m(x), done.set()))
    last, gap = time.perf_counter(), 0.0
    th.start()
    while not done.is_set():
        now = time.perf_counter()
        gap, last = max(gap, now - last), now
    th.join()
    # Holding the GIL for the call would stall this loop for the whole call.
    assert call > 0.05, call
    assert gap < call / 2, (gap, call)


def test_prepare_packs_a_snapshot():
    m, w = lstm(I=20, H=33)
    x = x_of(B=3, T=40, I=20)
    y = m(x)
    m.prepare()
    np.testing.assert_allclose(m(x), y, atol=1e-6, rtol=0)
    state = None
    for t in range(x.shape[1]):
        y_t, state = m.step(x[:, t], state)
        np.testing.assert_allclose(y_t, y[:, t], atol=1e-5, rtol=0)
    # In-place changes are not seen until prepared (or loaded) again.
    w["weight_hh"] *= -1.5
    np.testing.assert_allclose(m(x), y, atol=1e-6, rtol=0)
    m.prepare()
    y2 = m(x)
    assert np.abs(y2 - y).max() > 1e-3
    m.load_weights(w)
    np.testing.assert_allclose(m(x), y2, atol=1e-6, rtol=0)
    unbound = seqc.compile(ROOT / "examples/lstm.seq", dims={"I": 4, "H": 6})
    with pytest.raises(seqc.WeightError, match="not bound"):
        unbound.prepare()


# ---- AOT shared objects -----------------------------------------------------------------------
def test_load_so_matches_jit(tmp_path):
    exe = seqc_bin()
    if exe is None:
        pytest.fail("no seqc command found beside libseq; set SEQC_BIN")
    so = tmp_path / "liblstm2.so"
    subprocess.run([exe, str(ROOT / "examples/lstm2.seq"), "--dims", "I=4,H=6", "-o", str(so)],
                   check=True)
    torch.manual_seed(7)
    ref = torch.nn.LSTM(4, 6, num_layers=2, batch_first=True)
    a = seqc.load_so(so)
    assert [s.name for s in a.states] == ["l0_h", "l0_c", "l1_h", "l1_c"]
    assert a.dims == {"I": 4, "H": 6} == seqc.compile(ROOT / "examples/lstm2.seq",
                                                     dims={"I": 4, "H": 6}).dims
    with pytest.raises(seqc.WeightError, match="not bound"):
        a(torch.randn(2, 3, 4))
    a.load_weights(ref.state_dict())
    x = torch.randn(2, 7, 4)
    with torch.no_grad():
        y_ref, (h_ref, _) = ref(x)
    y, st = a(x, return_state=True)
    torch.testing.assert_close(y, y_ref, atol=2e-5, rtol=0)
    torch.testing.assert_close(st["l1_h"], h_ref[1], atol=2e-5, rtol=0)
    y_t, st = a.step(x[:, 0])
    torch.testing.assert_close(y_t, y_ref[:, 0], atol=2e-5, rtol=0)
    with pytest.raises(ValueError, match="length"):
        a(x, lengths=[8, 1])
    with pytest.raises(seqc.SeqError, match="needs a module compiled"):
        a.report()
    # The weights packed once (SYM_prepare): the same results, steps too.
    a.prepare()
    torch.testing.assert_close(a(x), y_ref, atol=2e-5, rtol=0)
    y_t, st = a.step(x[:, 0])
    torch.testing.assert_close(y_t, y_ref[:, 0], atol=2e-5, rtol=0)
    a.load_weights(ref.state_dict())  # back to the calls that pack
    torch.testing.assert_close(a(x), y_ref, atol=2e-5, rtol=0)


# ---- out= and state_out= ------------------------------------------------------------------------
def test_out_and_state_out_write_in_place():
    m, _ = lstm()
    x = x_of()
    y_ref, st_ref = m(x, return_state=True)
    y = np.full((2, 5, 6), np.nan, np.float32)
    st = {"h": np.empty((2, 6), np.float32), "c": np.empty((2, 6), np.float32)}
    h_buf = st["h"]
    got, got_st = m(x, out=y, state_out=st)
    assert got is y and got_st is st and st["h"] is h_buf
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(st["c"], st_ref["c"])
    # step: the state updated in place (state_out may be state itself), the
    # same values as new arrays each time.
    state, new_state = {"h": np.zeros((2, 6), np.float32), "c": np.zeros((2, 6), np.float32)}, None
    y_t = np.empty((2, 6), np.float32)
    for t in range(5):
        want, new_state = m.step(x[:, t], new_state)
        got, state2 = m.step(x[:, t], state, out=y_t, state_out=state)
        assert got is y_t and state2 is state
        np.testing.assert_array_equal(y_t, want)
        np.testing.assert_array_equal(state["c"], new_state["c"])
    np.testing.assert_array_equal(state["h"], st_ref["h"])
    # torch tensors too.
    xt = torch.from_numpy(x)
    yt = torch.empty(2, 5, 6)
    assert m(xt, out=yt) is yt
    np.testing.assert_array_equal(yt.numpy(), y_ref)
    # Refused, naming the output: wrong shape, dtype, read-only, requires_grad.
    with pytest.raises(ValueError, match=r"out y: .*shape \[2, 5, 6\]"):
        m(x, out=np.empty((2, 5, 5), np.float32))
    with pytest.raises(ValueError, match="out y"):
        m(x, out=np.empty((2, 5, 6), np.float64))
    ro = np.empty((2, 5, 6), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        m(x, out=ro)
    with pytest.raises(ValueError, match="out y"):
        m(xt, out=torch.empty(2, 5, 6, requires_grad=True))
    with pytest.raises(ValueError, match="state_out: a dict of every state"):
        m(x, state_out={"h": np.empty((2, 6), np.float32)})


def test_outputs_are_fresh_each_call():
    m, _ = lstm()
    x0 = x_of(T=1)[:, 0]
    y1, s1 = m.step(x0)
    y1_copy, h1_copy = y1.copy(), s1["h"].copy()
    y2, s2 = m.step(x0, s1)
    assert not np.shares_memory(y1, y2) and not np.shares_memory(s1["h"], s2["h"])
    assert not np.shares_memory(s2["h"], s2["c"]) and not np.shares_memory(y2, s2["h"])
    np.testing.assert_array_equal(y1, y1_copy)  # earlier results are not overwritten
    np.testing.assert_array_equal(s1["h"], h1_copy)
    y2[:] = 7  # writing one output leaves the others alone
    assert not (s2["h"] == 7).any()


TWO_OUTPUTS = """
cell Two(I, H) {
  param W: [H, I]
  input  x: [I]
  state  h: [H] = 0
  state  m: [H, 2] = 0
  output y: [H]
  output z: [H]
  step {
    h' = tanh(W @ x + 0.5 * h)
    m' = m * 0.9 + h'[:, None]
    y = h' * 2.0
    z = sum(m', axis=1)
  }
}
"""


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_fast_calls_equal_the_general_path(kind):
    # m(x) and m.step(x, state) with one positional input take a path written
    # out for the module (seqc/_module.py _make_quick); an input given by name
    # takes the general one. Both must give the same values, for outputs and
    # states of one shape (one block), of several shapes, and several outputs.
    cases = [(ROOT / "examples/lstm.seq", {"I": 4, "H": 6}, "x", None),
             (ROOT / "stdlib/mamba_ssm.seq", {"d_inner": 8, "d_state": 4, "dt_rank": 2}, "x", None),
             (TWO_OUTPUTS, {"I": 3, "H": 5}, "x", None),
             (ROOT / "stdlib/lstm.seq", {"I": 4, "H": 6}, "x", "LSTM")]
    conv = (lambda a: torch.from_numpy(a)) if kind == "torch" else (lambda a: a)
    for src, dims, name, entry in cases:
        m = seqc.compile(src, dims=dims, **({"entry": entry} if entry else {}))
        rng = np.random.default_rng(3)
        m.load_weights({p.name: (rng.standard_normal(p.shape) * 0.3).astype(np.float32)
                        for p in m.params})
        x = conv(rng.standard_normal((3, 7) + tuple(m.inputs[0].shape)).astype(np.float32))
        fast = m(x, return_state=True)
        # The fast path takes these calls (torch's after the first call has
        # found torch loaded).
        assert m._qfwd(x, None, True) is not None
        slow = m.forward(**{name: x}, return_state=True)
        for a, b in zip(as_tuple(fast[0]), as_tuple(slow[0])):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        state_f = state_s = None
        for t in range(7):
            xt = x[:, t].contiguous() if kind == "torch" else np.ascontiguousarray(x[:, t])
            yf, state_f = m.step(xt, state_f)
            ys, state_s = m.step(**{name: xt}, state=state_s)
            assert type(state_f) is dict and list(state_f) == list(m.state_names)
            for a, b in zip(as_tuple(yf), as_tuple(ys)):
                assert type(a) is type(b) and tuple(a.shape) == tuple(b.shape)
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
            for k in m.state_names:
                assert type(state_f[k]) is type(x)
                np.testing.assert_array_equal(np.asarray(state_f[k]), np.asarray(state_s[k]))
        for k in m.state_names:  # stepping gives forward's final state
            np.testing.assert_allclose(np.asarray(state_f[k]), np.asarray(fast[1][k]),
                                       rtol=1e-5, atol=1e-6)
        # Written in place: out= and state_out=state.
        y_out = tuple(conv(np.full((3,) + tuple(o.shape), np.nan, np.float32)) for o in m.outputs)
        st = {k: (v.clone() if kind == "torch" else v.copy()) for k, v in state_s.items()}
        xt = x[:, 0].contiguous() if kind == "torch" else np.ascontiguousarray(x[:, 0])
        want, want_st = m.step(**{name: xt}, state=st)
        got, got_st = m.step(xt, st, out=y_out if len(y_out) > 1 else y_out[0], state_out=st)
        assert got_st is st
        for a, b in zip(as_tuple(got), as_tuple(want)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        for k in m.state_names:
            np.testing.assert_array_equal(np.asarray(st[k]), np.asarray(want_st[k]))
        # out= without a state: the general path makes the state.
        got, got_st = m.step(xt, None, out=y_out if len(y_out) > 1 else y_out[0])
        want, want_st = m.step(**{name: xt})
        for k in m.state_names:
            np.testing.assert_array_equal(np.asarray(got_st[k]), np.asarray(want_st[k]))
        # A state read-only (NumPy) or requiring grad (torch) is refused as state_out.
        ro = {k: (v.clone().requires_grad_() if kind == "torch" else v.copy())
              for k, v in st.items()}
        if kind == "numpy":
            for v in ro.values():
                v.flags.writeable = False
        with pytest.raises(ValueError, match="state_out"):
            m.step(xt, ro, out=y_out if len(y_out) > 1 else y_out[0], state_out=ro)


def as_tuple(y):
    """The outputs of a call as a tuple (one output is not)."""
    return y if type(y) is tuple else (y,)


# ---- Newton options --------------------------------------------------------------------

def test_newton_warm_starts_and_stats():
    # A module with warm starts solves the same input again from the last
    # trajectory: one iteration per solve, and the step loop's values.
    src = ROOT / "stdlib/paragru.seq"
    rng = np.random.default_rng(5)
    seq = seqc.compile(src, dims={"I": 4, "H": 6}, strategy="sequential")
    w = {p.name: (rng.standard_normal(p.shape) * 0.3).astype(np.float32) for p in seq.params}
    seq.load_weights(w)
    x = x_of(B=3, T=50)
    want = seq(x)
    m = seqc.compile(src, dims={"I": 4, "H": 6}, strategy="newton", newton_warm=True)
    m.load_weights(w)
    seqc.newton_stats(reset=True)
    np.testing.assert_allclose(m(x), want, rtol=1e-4, atol=1e-5)
    first = seqc.newton_stats(reset=True)
    assert first["solves"] == 3 and first["warm_starts"] == 0 and first["fallbacks"] == 0
    np.testing.assert_allclose(m(x), want, rtol=1e-4, atol=1e-5)
    again = seqc.newton_stats(reset=True)
    assert again["warm_starts"] == 3 and again["iterations"] == 3, again
    assert first["iterations"] > 3


def test_newton_options_reach_the_compiler():
    # A dense Jacobian formed whole (exact Newton) in windows of 7 steps gives
    # the step loop's values; the report says which Newton ran.
    src = ROOT / "stdlib/gru.seq"
    rng = np.random.default_rng(3)
    seq = seqc.compile(src, dims={"I": 4, "H": 6}, strategy="sequential")
    w = {p.name: (rng.standard_normal(p.shape) * 0.3).astype(np.float32) for p in seq.params}
    seq.load_weights(w)
    x = x_of(B=3, T=30)
    want = seq(x)
    for dense, window in ((False, None), (True, 7)):
        m = seqc.compile(src, dims={"I": 4, "H": 6}, strategy="newton", newton_dense=dense,
                         newton_window=window)
        m.load_weights(w)
        np.testing.assert_allclose(m(x), want, rtol=1e-4, atol=1e-5)
        why = m.report()["cells"][0]["states"][0]["why"]
        assert ("exact Newton" if dense else "quasi-Newton") in why, why


def test_context_inputs(tmp_path):
    """A context (examples/attention_decoder.seq's memory and mask) is given
    once per sequence, [B, ...]: through the JIT and an AOT library alike, the
    forward and the step agree, and a context given per token is refused."""
    dims = {"I": 3, "H": 4, "S": 5, "A": 3}
    m = seqc.compile(ROOT / "examples/attention_decoder.seq", dims=dims)
    assert [(s.name, s.context) for s in m.inputs] == \
        [("x", False), ("memory", True), ("mask", True)]
    rng = np.random.default_rng(3)
    w = {p.name: rng.normal(0, 0.5, p.shape).astype(np.float32) for p in m.params}
    m.load_weights(w)
    x = rng.normal(size=(2, 6, 3)).astype(np.float32)
    mem = rng.normal(size=(2, 5, 4)).astype(np.float32)
    mask = np.zeros((2, 5), np.float32)
    mask[1, 3:] = -1e9
    y, align = m(x, memory=mem, mask=mask)
    assert y.shape == (2, 6, 4) and align.shape == (2, 6, 5)
    np.testing.assert_allclose(align.sum(-1), 1, atol=1e-5)
    assert np.all(align[1, :, 3:] == 0)  # the padding gets no weight
    (y0, a0), st = m.step(x[:, 0], memory=mem, mask=mask)
    np.testing.assert_allclose(y0, y[:, 0], atol=1e-6)
    with pytest.raises(ValueError, match=r"context memory: shape \[2, 6, 5, 4\], expected \[B, 5, 4\]"):
        m(x, memory=np.repeat(mem[:, None], 6, 1), mask=mask)
    exe = seqc_bin()
    if exe is None:
        pytest.fail("no seqc command found beside libseq; set SEQC_BIN")
    so = tmp_path / "libattn.so"
    subprocess.run([exe, str(ROOT / "examples/attention_decoder.seq"), "--dims",
                    ",".join(f"{k}={v}" for k, v in dims.items()), "-o", str(so)], check=True)
    a = seqc.load_so(so)
    assert [(s.name, s.context) for s in a.inputs] == [(s.name, s.context) for s in m.inputs]
    a.load_weights(w)
    y2, align2 = a(x, memory=mem, mask=mask)
    np.testing.assert_allclose(y2, y, atol=1e-6)
    np.testing.assert_allclose(align2, align, atol=1e-6)


def test_grid_cell_rows_and_scalar_params():
    """A grid cell (stdlib/plstm2d.seq) through the Python API: weights from a
    dict of NumPy arrays, its scalar `param b_S: []` among them (kept 0-d, not
    made [1]); inputs [B, rows, Y, I]; row-by-row steps equal the forward and
    the PyTorch-independent fixture."""
    sys.path.insert(0, str(ROOT / "tests/reference"))
    from fixture_io import read_safetensors  # NumPy alone
    d = ROOT / "tests/reference/fixtures/std_plstm2d"
    w = {k: np.array(v) for k, v in read_safetensors(str(d / "weights.safetensors")).items()}
    assert w["b_S"].shape == ()
    m = seqc.compile(ROOT / "stdlib/plstm2d.seq", dims={"Y": 4}, weights=w)
    x = np.load(d / "x.npy")
    init = {"Cr": np.load(d / "Cr0.npy"), "Cd": np.load(d / "Cd0.npy")}
    y, st = m(x, lengths=np.load(d / "lengths.npy"), state=init, return_state=True)
    np.testing.assert_allclose(y, np.load(d / "y.npy"), atol=5e-6, rtol=0)
    np.testing.assert_allclose(st["Cd"], np.load(d / "Cd_n.npy"), atol=5e-6, rtol=0)
    s, rows = {k: v[:1] for k, v in init.items()}, []
    for t in range(x.shape[1]):
        yt, s = m.step(x[:1, t], s)
        rows.append(yt)
    np.testing.assert_allclose(np.stack(rows, 1), y[:1], atol=1e-6, rtol=0)
