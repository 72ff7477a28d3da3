"""torch.nn.LSTM, nn.GRU and a 2-layer bidirectional nn.LSTM: their
state_dict() loaded as it is, outputs and final states compared with torch's
(tensors in, tensors out), with initial states, lengths and steps."""
import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import seqc
from conftest import ROOT

BILSTM2 = '''
import "std/lstm.seq"
model BiLSTM2(I, H) {
  input  x: [I]
  output y: [2*H]
  layer f0 = LSTM(I, H) suffix "_l0"
  layer b0 = reverse LSTM(I, H) suffix "_l0_reverse"
  layer f1 = LSTM(2*H, H) suffix "_l1"
  layer b1 = reverse LSTM(2*H, H) suffix "_l1_reverse"
  forward {
    let z = concat(f0(x), b0(x))
    y = concat(f1(z), b1(z))
  }
}
'''
TOL = 2e-5


def run_packed(mod, x, lengths, h0=None):
    packed = pack_padded_sequence(x, torch.tensor(lengths), batch_first=True,
                                  enforce_sorted=False)
    out, st = mod(packed, h0)
    y, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    return y, st


def close(a, b, tol=TOL):
    assert isinstance(a, torch.Tensor)
    torch.testing.assert_close(a, b.detach(), atol=tol, rtol=0)


@torch.no_grad()
def test_lstm():
    torch.manual_seed(1)
    ref = torch.nn.LSTM(6, 10, batch_first=True)
    m = seqc.compile(ROOT / "examples/lstm.seq", weights=ref.state_dict())
    assert m.dims == {"I": 6, "H": 10}
    x = torch.randn(3, 9, 6)
    h0, c0 = torch.randn(1, 3, 10), torch.randn(1, 3, 10)
    y_ref, (h_ref, c_ref) = ref(x, (h0, c0))
    y, st = m(x, state={"h": h0[0], "c": c0[0]}, return_state=True)
    close(y, y_ref)
    close(st["h"], h_ref[0])
    close(st["c"], c_ref[0])
    # Lengths: outputs past the end are zero, final states at the end.
    lengths = [9, 4, 1]
    y_ref, (h_ref, c_ref) = run_packed(ref, x, lengths)
    y, st = m(x, lengths=torch.tensor(lengths), return_state=True)
    close(y, y_ref)
    close(st["h"], h_ref[0])
    assert torch.count_nonzero(y[1, 4:]) == 0
    # Steps chained over the sequence give forward's outputs.
    y_ref, _ = ref(x)
    state = None
    for t in range(9):
        y_t, state = m.step(x[:, t], state)
        close(y_t, y_ref[:, t])


@torch.no_grad()
def test_gru():
    torch.manual_seed(2)
    ref = torch.nn.GRU(5, 7, batch_first=True)
    m = seqc.compile(ROOT / "examples/gru.seq", dims={"I": 5, "H": 7})
    m.load_weights(ref.state_dict())
    x = torch.randn(4, 11, 5)
    h0 = torch.randn(1, 4, 7)
    y_ref, h_ref = ref(x, h0)
    y, st = m(x, state=(h0[0],), return_state=True)
    close(y, y_ref)
    close(st["h"], h_ref[0])
    y_ref, h_ref = run_packed(ref, x, [3, 11, 6, 2], h0)
    y, st = m(x, lengths=[3, 11, 6, 2], state={"h": h0[0]}, return_state=True)
    close(y, y_ref)
    close(st["h"], h_ref[0])


@torch.no_grad()
def test_bidirectional_two_layer_lstm():
    torch.manual_seed(3)
    ref = torch.nn.LSTM(5, 8, num_layers=2, bidirectional=True, batch_first=True)
    m = seqc.compile(BILSTM2, weights=ref.state_dict())
    assert m.dims == {"I": 5, "H": 8}
    assert not m.has_step
    x = torch.randn(3, 10, 5)
    y_ref, (h_ref, c_ref) = ref(x)
    y, st = m(x, return_state=True)
    close(y, y_ref)
    # torch's h_n: [layer 0 fwd, layer 0 bwd, layer 1 fwd, layer 1 bwd].
    for i, layer in enumerate(["f0", "b0", "f1", "b1"]):
        close(st[layer + ".h"], h_ref[i])
        close(st[layer + ".c"], c_ref[i])
    lengths = [10, 6, 3]
    y_ref, (h_ref, _) = run_packed(ref, x, lengths)
    y, st = m(x, lengths=lengths, return_state=True)
    close(y, y_ref)
    for i, layer in enumerate(["f0", "b0", "f1", "b1"]):
        close(st[layer + ".h"], h_ref[i])
    with pytest.raises(seqc.SeqError, match="no step form"):
        m.step(x[:, 0])


@torch.no_grad()
def test_numpy_in_numpy_out_and_requires_grad():
    torch.manual_seed(4)
    ref = torch.nn.LSTM(4, 6, batch_first=True)
    m = seqc.compile(ROOT / "examples/lstm.seq", weights=ref.state_dict())
    x = torch.randn(2, 5, 4)
    y_np = m(x.numpy())
    assert isinstance(y_np, np.ndarray) and y_np.dtype == np.float32
    np.testing.assert_allclose(y_np, ref(x)[0].numpy(), atol=TOL, rtol=0)
    with torch.enable_grad():
        xg = x.clone().requires_grad_()
        y = m(xg)
        assert isinstance(y, torch.Tensor) and y.grad_fn is None


def test_weights_are_shared_not_copied():
    torch.manual_seed(5)
    ref = torch.nn.LSTM(4, 6, batch_first=True)
    m = seqc.compile(ROOT / "examples/lstm.seq", weights=ref.state_dict())
    x = torch.randn(2, 5, 4)
    with torch.no_grad():
        ref.bias_ih_l0.add_(0.5)  # in place, as an optimizer step
        close(m(x), ref(x)[0])


def test_titans_memory_against_torch_autograd():
    """stdlib/titans.seq (an MLP memory taking a gradient step per token,
    the gradient derived by seqc) against the same recurrence in float64
    torch, the inner gradient from torch.autograd.grad."""
    torch.manual_seed(3)
    I, D, Dh, B, T = 6, 4, 5, 2, 11
    w = {"W_q": torch.randn(D, I) / I ** 0.5, "W_k": torch.randn(D, I) / I ** 0.5,
         "W_v": torch.randn(D, I) / I ** 0.5, "w_alpha": 0.3 * torch.randn(I),
         "w_eta": 0.3 * torch.randn(I), "w_theta": 0.3 * torch.randn(I),
         "W1_0": torch.randn(Dh, D) / D ** 0.5, "W2_0": torch.randn(D, Dh) / Dh ** 0.5}
    m = seqc.compile(ROOT / "stdlib/titans.seq", weights=w)
    x = torch.randn(B, T, I)
    y, st = m(x, return_state=True)

    p = {k: v.double() for k, v in w.items()}
    F = torch.nn.functional

    def l2(t):
        return t / torch.sqrt((t * t).sum() + 1e-6)

    ys = torch.zeros(B, T, D, dtype=torch.float64)
    for b in range(B):
        W1, W2 = p["W1_0"].clone(), p["W2_0"].clone()
        S1, S2 = torch.zeros_like(W1), torch.zeros_like(W2)
        for t in range(T):
            xt = x[b, t].double()
            q, k = l2(F.silu(p["W_q"] @ xt)), l2(F.silu(p["W_k"] @ xt))
            v = F.silu(p["W_v"] @ xt)
            alpha, eta, theta = (torch.sigmoid(p[n] @ xt) for n in ("w_alpha", "w_eta", "w_theta"))
            A, Bm = W1.clone().requires_grad_(), W2.clone().requires_grad_()
            loss = ((Bm @ F.silu(A @ k) - v) ** 2).sum()
            g1, g2 = torch.autograd.grad(loss, (A, Bm))
            S1, S2 = eta * S1 - theta * g1, eta * S2 - theta * g2
            W1, W2 = (1 - alpha) * W1 + S1, (1 - alpha) * W2 + S2
            ys[b, t] = W2 @ F.silu(W1 @ q)
        close(st["W1"][b], W1.float(), 1e-5)
        close(st["S2"][b], S2.float(), 1e-5)
    close(y, ys.float(), 1e-5)
