"""cuda_peers.py - PyTorch on the GPU at the shapes tools/gpu-check.sh runs
seqc's CUDA backend at (bench/cuda_bench.c), in float32:

  lstm, gru            torch.nn.LSTM / nn.GRU (cuDNN), B=64 T=1024 I=256 H=256,
                       batch_first; strict fp32 (TF32 off), and again with
                       cuDNN's default (TF32 allowed) for context
  mamba-ssm            Mamba's selective SSM (stdlib/mamba_ssm.seq: x_proj,
                       dt_proj, softplus, the scan, y = s C + D x) written in
                       torch, chunked over time: within chunks of L tokens the
                       cumsum of the log-decays (h_t = exp(Lc_t) * cumsum(exp(-Lc_s)
                       u_s)), between chunks a loop that carries the state; fp32,
                       TF32 off. d_inner=4096 d_state=16 dt_rank=256 B=1, T=65536
                       when the budget allows (estimated from a T=4096 run),
                       else T=4096. Checked first against a plain loop over
                       time (float64) at small sizes.

usage: python3 bench/cuda_peers.py [ROUNDS] [--check-only] [--device DEV]
  ROUNDS        timed calls per case (default 10; mamba-ssm at most 5)
  --check-only  only the chunked-vs-loop check (runs on the CPU too)
  $CUDA_PEERS_BUDGET_S  seconds the mamba-ssm case may take (default 60)

Each timed call is bracketed by torch.cuda.synchronize(); a warm-up call
comes first; the median and the minimum are printed. Output: a header line
(versions, device, precision), then a Markdown table, one row per case:
  | case | implementation | precision | shape | median ms | min ms | tok/s | rounds |
Without torch or without a CUDA device it prints why and exits 0.
"""
import math
import os
import statistics
import sys
import time


def log(msg):
    print(msg, flush=True)


def timed(fn, rounds, sync):
    """Median and min seconds of `rounds` calls of fn after one warm-up."""
    fn()
    sync()
    times = []
    for _ in range(rounds):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times)


def row(case, impl, prec, shape, tokens, med, mn, rounds):
    log(f"| {case} | {impl} | {prec} | {shape} | {med * 1e3:.3f} | {mn * 1e3:.3f} | "
        f"{tokens / med:.4g} | {rounds} |")


def fail_row(case, impl, shape, why):
    why = str(why).replace("|", "/").splitlines()[0][:160] if str(why) else type(why).__name__
    log(f"| {case} | {impl} | - | {shape} | failed: {why} | - | - | 0 |")


# ---- the selective SSM (stdlib/mamba_ssm.seq) ---------------------------------------

def ssm_params(torch, d, n, r, device, dtype, gen):
    """Weights as seqc's --random-weights draws them: U(-k, k), k = 1/sqrt(fan_in)."""
    def u(*shape):
        k = 1.0 / math.sqrt(shape[-1])
        return ((torch.rand(*shape, generator=gen, dtype=torch.float64) * 2 - 1) * k).to(
            device=device, dtype=dtype)
    return {"x_proj": u(r + 2 * n, d), "dt_proj": u(d, r), "dt_bias": u(d),
            "A_log": u(d, n), "D": u(d)}


def ssm_inputs(torch, p, x):
    """delta [T, d], B [T, n], C [T, n], A [d, n] from x [T, d]."""
    n = p["A_log"].shape[1]
    r = p["dt_proj"].shape[1]
    xp = x @ p["x_proj"].t()
    dt, Bm, Cm = xp[:, :r], xp[:, r:r + n], xp[:, r + n:]
    delta = torch.nn.functional.softplus(dt @ p["dt_proj"].t() + p["dt_bias"])
    return delta, Bm, Cm, -torch.exp(p["A_log"])


def ssm_loop(torch, p, x):
    """The step as the cell writes it, token by token (the reference)."""
    delta, Bm, Cm, A = ssm_inputs(torch, p, x)
    s = torch.zeros_like(A)
    ys = []
    for t in range(x.shape[0]):
        s = torch.exp(delta[t, :, None] * A) * s + (delta[t] * x[t])[:, None] * Bm[t][None, :]
        ys.append(s @ Cm[t] + p["D"] * x[t])
    return torch.stack(ys)


def ssm_chunked(torch, p, x, L=16, block=4096):
    """The same, chunked: per block of `block` tokens the [block, d, n]
    log-decays la = delta A (<= 0) and writes u = (delta x) B^T; within
    chunks of L tokens Lc = cumsum(la) and h_t = exp(Lc_t) (h_0 +
    cumsum_s exp(-Lc_s) u_s), whose exp(-Lc) stays finite while L max|la| <
    80 (L is halved until it does); the chunks' starting states by a loop
    over chunks, h_c+1 = exp(Lc_end) h_c + h_local_end."""
    delta, Bm, Cm, A = ssm_inputs(torch, p, x)
    T, d = x.shape
    n = A.shape[1]
    s = torch.zeros(d, n, device=x.device, dtype=x.dtype)
    ys = []
    for t0 in range(0, T, block):
        t1 = min(T, t0 + block)
        la = delta[t0:t1, :, None] * A[None]
        u = (delta[t0:t1] * x[t0:t1])[:, :, None] * Bm[t0:t1, None, :]
        m = float(la.abs().max()) if la.numel() else 0.0
        c = L
        while c > 1 and (c * m >= 80 or (t1 - t0) % c):
            c //= 2
        nc = (t1 - t0) // c
        Lc = la.reshape(nc, c, d, n).cumsum(1)
        eL = torch.exp(Lc)
        h = eL * torch.cumsum(torch.exp(-Lc) * u.reshape(nc, c, d, n), 1)
        hs = torch.empty(nc + 1, d, n, device=x.device, dtype=x.dtype)
        hs[0] = s
        a_end, h_end = eL[:, -1], h[:, -1]
        for k in range(nc):
            torch.addcmul(h_end[k], a_end[k], hs[k], out=hs[k + 1])
        h = h + eL * hs[:-1, None]
        y = torch.einsum("kcdn,kcn->kcd", h, Cm[t0:t1].reshape(nc, c, n)).reshape(t1 - t0, d)
        ys.append(y + p["D"] * x[t0:t1])
        s = hs[-1]
    return torch.cat(ys)


def ssm_check(torch, device):
    """chunked == loop in float64 at small sizes (chunk sizes that divide
    and that do not divide the block, more than one block). Returns the
    largest error relative to the output's scale."""
    gen = torch.Generator().manual_seed(1)
    worst = 0.0
    for d, n, r, T, L, block in ((8, 4, 2, 37, 4, 16), (64, 16, 4, 200, 16, 64),
                                 (32, 16, 8, 130, 8, 130)):
        p = ssm_params(torch, d, n, r, device, torch.float64, gen)
        x = (torch.rand(T, d, generator=gen, dtype=torch.float64) * 2 - 1).to(device)
        ref = ssm_loop(torch, p, x)
        got = ssm_chunked(torch, p, x, L=L, block=block)
        err = float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
        worst = max(worst, err)
    return worst


def ssm_case(torch, rounds, device, sync):
    d, n, r = 4096, 16, 256
    budget = float(os.environ.get("CUDA_PEERS_BUDGET_S", "60"))
    impl = "torch selective scan, chunked (cumsum of log-decays, L=16)"
    try:
        err = ssm_check(torch, device)
        ok = err < 1e-9
        log(f"cuda_peers: mamba-ssm check: chunked against the plain loop (float64): "
            f"max relative error {err:.2e} ({'ok' if ok else 'WRONG'})")
        if not ok:
            fail_row("mamba-ssm", impl, f"d_inner={d} d_state={n}", "chunked != loop")
            return
    except Exception as e:  # noqa: BLE001 - report and go on
        fail_row("mamba-ssm", impl, f"d_inner={d} d_state={n}", f"check: {e!r}")
        return
    gen = torch.Generator().manual_seed(2)
    p = ssm_params(torch, d, n, r, device, torch.float32, gen)
    rounds = min(rounds, 5)
    start = time.perf_counter()
    for T in (4096, 65536):
        shape = f"B=1 T={T} d_inner={d} d_state={n} dt_rank={r}"
        try:
            x = torch.rand(T, d, device=device) * 2 - 1
            with torch.inference_mode():
                med, mn = timed(lambda: ssm_chunked(torch, p, x), rounds, sync)
            del x
        except Exception as e:  # noqa: BLE001
            fail_row("mamba-ssm", impl, shape, repr(e))
            return
        spent = time.perf_counter() - start
        if T == 4096:
            # T=65536 costs about 16 times as much per call; warm-up + rounds.
            est = 16 * med * (rounds + 1)
            if spent + est > budget:
                row("mamba-ssm", impl, "fp32 (TF32 off)", shape, T, med, mn, rounds)
                log(f"cuda_peers: mamba-ssm at T=65536 skipped: about {est:.0f} s more "
                    f"(budget {budget:.0f} s, $CUDA_PEERS_BUDGET_S)")
                return
            continue
        row("mamba-ssm", impl, "fp32 (TF32 off)", shape, T, med, mn, rounds)


# ---- cuDNN RNNs ------------------------------------------------------------------------

def rnn_case(torch, name, cls, rounds, device, sync):
    B, T, I, H = 64, 1024, 256, 256
    shape = f"B={B} T={T} I={I} H={H}"
    impl = f"torch.nn.{cls.__name__} (cuDNN)"
    try:
        torch.manual_seed(0)
        net = cls(I, H, batch_first=True).to(device).eval()
        x = torch.randn(B, T, I, device=device)
        for tf32, case, prec in ((False, name, "fp32 (TF32 off)"),
                                 (True, f"{name}-tf32", "TF32 allowed (cuDNN default)")):
            torch.backends.cudnn.allow_tf32 = tf32
            with torch.inference_mode():
                med, mn = timed(lambda: net(x), rounds, sync)
            row(case, impl, prec, shape, B * T, med, mn, rounds)
    except Exception as e:  # noqa: BLE001
        fail_row(name, impl, shape, repr(e))
    finally:
        torch.backends.cudnn.allow_tf32 = False


def attn_case(torch, rounds, device, sync):
    """Causal softmax attention, the shape of gpu-check's row 6: PyTorch's
    scaled_dot_product_attention(is_causal=True) picks its own kernel (flash or
    memory-efficient where it can)."""
    import torch.nn.functional as F
    B, NH, T, DH = 1, 16, 8192, 64
    shape = f"B={B} NH={NH} T={T} DH={DH}"
    impl = "torch.nn.functional.scaled_dot_product_attention(is_causal=True)"
    try:
        g = torch.Generator(device=device).manual_seed(0)
        q, k, v = (torch.randn(B, NH, T, DH, device=device, generator=g) for _ in range(3))
        with torch.inference_mode():
            med, mn = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                            rounds, sync)
        row("attn", impl, "fp32", shape, B * T, med, mn, rounds)
    except Exception as e:  # noqa: BLE001
        fail_row("attn", impl, shape, repr(e))


def main():
    args = [a for a in sys.argv[1:]]
    check_only = "--check-only" in args
    device = "cuda"
    if "--device" in args:
        device = args[args.index("--device") + 1]
        del args[args.index("--device"):args.index("--device") + 2]
    args = [a for a in args if a != "--check-only"]
    rounds = int(args[0]) if args else 10
    try:
        import torch
    except Exception as e:  # noqa: BLE001 - any import failure means no peers
        log(f"cuda_peers: PyTorch is not importable here ({type(e).__name__}: {e}); "
            f"no PyTorch peers (python: {sys.executable})")
        return 0
    if check_only:
        err = ssm_check(torch, device)
        log(f"cuda_peers: mamba-ssm check on {device}: chunked against the plain loop "
            f"(float64): max relative error {err:.2e} ({'ok' if err < 1e-9 else 'WRONG'})")
        return 0 if err < 1e-9 else 1
    if device.startswith("cuda") and not torch.cuda.is_available():
        log(f"cuda_peers: torch {torch.__version__} sees no CUDA device "
            f"(built for CUDA {torch.version.cuda}); no PyTorch peers")
        return 0
    # Strict float32: no TF32 in matrix products or cuDNN unless a row says so.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else device
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    log(f"cuda_peers: torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {cudnn}, "
        f"{name}; float32 tensors, TF32 off unless a row says so; median of {rounds} rounds "
        f"(mamba-ssm: at most 5) after a warm-up, torch.cuda.synchronize() around each")
    log("")
    log("| case | implementation | precision | shape | median ms | min ms | tok/s | rounds |")
    log("|---|---|---|---|---|---|---|---|")
    rnn_case(torch, "lstm", torch.nn.LSTM, rounds, device, sync)
    rnn_case(torch, "gru", torch.nn.GRU, rounds, device, sync)
    ssm_case(torch, rounds, device, sync)
    attn_case(torch, rounds, device, sync)
    return 0


if __name__ == "__main__":
    sys.exit(main())
