#!/usr/bin/env python3
"""Write the std-cell reference fixtures (tests/reference/fixtures/std_*/).

    python3 tests/reference/make_std_fixtures.py                 # write all, then self-check
    python3 tests/reference/make_std_fixtures.py --only std_lru  # one case
    python3 tests/reference/make_std_fixtures.py --self-check    # re-check what is on disk
    python3 tests/reference/make_std_fixtures.py --seqc build/seqc   # also run seqc (interp, cpu, interp --f64)

For each std cell: random weights (seeded, scaled so the recurrence is stable)
saved as float32 safetensors under the .seq's parameter names, an input x
[B=2, T=9, ...] float32, lengths [9, 4], initial states where the cell has
real states, and the float64 NumPy reference's outputs (numpy_refs/cells.py,
written from the papers). The reference is evaluated on the float32-rounded
weights and inputs, so the only difference left against seqc is rounding.

Needs numpy and safetensors (only for writing; the self-check parses the
safetensors header by hand).
"""

import argparse
import json
import math
import os
import re
import shutil
import struct
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
FIXTURES = os.path.join(HERE, "fixtures")
sys.path.insert(0, HERE)

from numpy_refs import cells  # noqa: E402
import functools  # noqa: E402

B, T = 2, 9
LENGTHS = [9, 4]
MAX_BYTES = 50 * 1024


def inv_softplus(y):
    return np.log(np.expm1(y))


# ------------------------------------------------------------ weights
# Each maker gets a seeded Generator and returns {name: array}. Scales keep
# values O(1): linear maps ~ N(0, 1/fan_in), decays strictly inside (0, 1).


def lin(rng, out, inp, scale=1.0):
    return rng.normal(0.0, scale / math.sqrt(inp), (out, inp))


def w_mingru(rng, I=5, H=4):
    return {"linear_z.weight": lin(rng, H, I), "linear_z.bias": rng.normal(0, 0.5, H),
            "linear_h.weight": lin(rng, H, I), "linear_h.bias": rng.normal(0, 0.5, H)}


def w_minlstm(rng, I=5, H=4):
    p = {}
    for g in "fih":
        p["linear_%s.weight" % g] = lin(rng, H, I)
        p["linear_%s.bias" % g] = rng.normal(0, 0.5, H)
    return p


def w_lru(rng, H=4, N=3):
    r = rng.uniform(0.5, 0.95, N)  # |lambda|
    theta = rng.uniform(0.1, math.pi, N)
    return {"nu_log": np.log(-np.log(r)), "theta_log": np.log(theta),
            "gamma_log": np.log(np.sqrt(1 - r ** 2)),
            "B_re": rng.normal(0, 1 / math.sqrt(2 * H), (N, H)),
            "B_im": rng.normal(0, 1 / math.sqrt(2 * H), (N, H)),
            "C_re": rng.normal(0, 1 / math.sqrt(N), (H, N)),
            "C_im": rng.normal(0, 1 / math.sqrt(N), (H, N)),
            "D": rng.normal(0, 1, H)}


def w_s4d(rng, H=4, N=3):
    return {"kernel.log_dt": np.log(rng.uniform(0.05, 0.5, H)),
            "kernel.C": rng.normal(0, 0.5, (H, N, 2)),
            "kernel.log_A_real": np.log(0.5 + rng.uniform(0, 0.2, (H, N))),
            "kernel.A_imag": math.pi * np.arange(N)[None, :] + rng.normal(0, 0.1, (H, N)),
            "D": rng.normal(0, 1, H)}


def w_s4(rng, H=4, N=3):
    # S4's LegS-like initialization scale: Re(Lambda) = -1/2, Im(Lambda) = pi n,
    # P ~ sqrt(n + 1/2), perturbed.
    n = np.arange(N)
    return {"kernel.log_dt": np.log(rng.uniform(0.05, 0.5, H)),
            "kernel.log_A_real": np.log(0.5 + rng.uniform(0, 0.2, (H, N))),
            "kernel.A_imag": math.pi * n[None, :] + rng.normal(0, 0.1, (H, N)),
            "kernel.P": np.stack([np.sqrt(n + 0.5)[None, :] + rng.normal(0, 0.1, (H, N)),
                                  rng.normal(0, 0.1, (H, N))], axis=-1),
            "kernel.B": rng.normal(0, 1, (H, N, 2)),
            "kernel.C": rng.normal(0, 0.5, (H, N, 2)),
            "D": rng.normal(0, 1, H)}


def w_lssl(rng, H=4, N=3):
    # HiPPO-LegS (the LSSL paper's initialization), perturbed.
    n = np.arange(N)
    A = -np.sqrt(np.outer(2 * n + 1, 2 * n + 1)) * (n[:, None] > n[None, :]) - np.diag(n + 1.0)
    return {"A": A + rng.normal(0, 0.05, (N, N)),
            "B": rng.normal(0, 1, (H, N)),
            "C": rng.normal(0, 1 / math.sqrt(N), (H, N)),
            "D": rng.normal(0, 1, H),
            "log_dt": np.log(rng.uniform(0.05, 0.5, H))}


def w_s5(rng, H=4, P=3):
    return {"Lambda_re": -rng.uniform(0.1, 1.0, P), "Lambda_im": rng.normal(0, 2.0, P),
            "B": rng.normal(0, 1 / math.sqrt(2 * H), (P, H, 2)),
            "C": rng.normal(0, 1 / math.sqrt(2 * P), (H, P, 2)),
            "D": rng.normal(0, 1, H),
            "log_step": np.log(rng.uniform(0.1, 0.8, (P, 1)))}


def w_ssm(rng, d_inner, d_state, dt_rank):
    return {"x_proj.weight": lin(rng, dt_rank + 2 * d_state, d_inner),
            "dt_proj.weight": lin(rng, d_inner, dt_rank, 0.5),
            "dt_proj.bias": inv_softplus(rng.uniform(0.1, 1.0, d_inner)),
            "A_log": np.log(np.tile(np.arange(1, d_state + 1, dtype=float), (d_inner, 1))
                            * rng.uniform(0.5, 1.5, (d_inner, d_state))),
            "D": rng.normal(0, 1, d_inner)}


def w_mamba_ssm(rng):
    return w_ssm(rng, 6, 4, 2)


def w_mamba(rng, d_model=4, d_inner=8, d_state=4, d_conv=4, dt_rank=2):
    p = w_ssm(rng, d_inner, d_state, dt_rank)
    p.update({"in_proj.weight": lin(rng, 2 * d_inner, d_model),
              "conv1d.weight": rng.normal(0, 1 / math.sqrt(d_conv), (d_inner, 1, d_conv)),
              "conv1d.bias": rng.normal(0, 0.3, d_inner),
              "out_proj.weight": lin(rng, d_model, d_inner)})
    return p


def w_mamba2(rng, d_model=4, ngroups=1, nheads=3, headdim=2, d_state=3, d_conv=4):
    d_inner = nheads * headdim
    cd = d_inner + 2 * ngroups * d_state
    return {"in_proj.weight": lin(rng, 2 * d_inner + 2 * ngroups * d_state + nheads, d_model),
            "conv1d.weight": rng.normal(0, 1 / math.sqrt(d_conv), (cd, 1, d_conv)),
            "conv1d.bias": rng.normal(0, 0.3, cd),
            "dt_bias": inv_softplus(rng.uniform(0.2, 0.8, nheads)),
            "A_log": np.log(rng.uniform(0.5, 2.0, nheads)),
            "D": rng.normal(0, 1, nheads),
            "norm.weight": 1 + rng.normal(0, 0.2, d_inner),
            "out_proj.weight": lin(rng, d_model, d_inner)}


def w_mamba2_groups(rng):
    return w_mamba2(rng, d_model=4, ngroups=2, nheads=4, headdim=2, d_state=3, d_conv=4)


def w_qkv(rng, I=5, Dk=3, Dv=4):
    return {"W_q": lin(rng, Dk, I), "W_k": lin(rng, Dk, I), "W_v": lin(rng, Dv, I)}


# Multi-head cells: NH = 2 heads, key dim 3 (2 for GLA), value dim 2 per head.
NH = 2


def w_linear_attention(rng, I=5, Dk=3, Dv=2):
    return w_qkv(rng, I, NH * Dk, NH * Dv)


def w_retnet(rng, I=5, d=4, Dv=3):
    """torchscale's MultiScaleRetention weights plus the two buffers its
    state_dict holds: decay = log(1 - 2^(-5-h)) and angle (theta, each twice)."""
    return {"q_proj.weight": lin(rng, NH * d, I), "k_proj.weight": lin(rng, NH * d, I),
            "v_proj.weight": lin(rng, NH * Dv, I), "g_proj.weight": lin(rng, NH * Dv, I),
            "out_proj.weight": lin(rng, I, NH * Dv),
            "decay": np.log(cells.retnet_gamma(NH)),
            "angle": np.repeat(cells.retnet_theta(d), 2)}


def w_gla(rng, I=5, Dk=2, Dv=3, R=2):
    p = w_qkv(rng, I, NH * Dk, NH * Dv)
    p.update({"W_a1": lin(rng, R, I), "W_a2": lin(rng, NH * Dk, R), "b_a": rng.normal(0, 1, NH * Dk)})
    return p


def w_mlstm(rng, I=5, D=3):
    p = {}
    for g in "qkvo":
        p["W_" + g] = lin(rng, NH * D, I)
        p["b_" + g] = rng.normal(0, 0.5, NH * D)  # b_k != 0 on purpose: eq. 22
    p.update({"w_i": rng.normal(0, 0.5, (NH, I)), "b_i": rng.normal(0, 0.5, NH),
              "w_f": rng.normal(0, 0.5, (NH, I)), "b_f": np.array([1.5, 3.0])})
    return p


def w_mlstm_no_bk(rng, I=5, D=3):
    p = w_mlstm(rng, I, D)
    p["b_k"] = np.zeros(NH * D)
    return p


def w_slstm(rng, I=5, H=4):
    b = rng.normal(0, 0.5, 4 * H)
    b[H:2 * H] += 1.5  # forget-gate bias, as xLSTM initializes it positive
    return {"W": lin(rng, 4 * H, I), "R": lin(rng, 4 * H, H, 0.8), "b": b}


def w_deltanet(rng, I=5, Dk=3, Dv=2):
    p = w_qkv(rng, I, NH * Dk, NH * Dv)
    p["W_b"] = rng.normal(0, 0.5, (NH, I))
    return p


def w_gated_deltanet(rng, I=5, Dk=3, Dv=2):
    p = w_deltanet(rng, I, Dk, Dv)
    p.update({"W_a": rng.normal(0, 0.5, (NH, I)), "A_log": np.log([0.5, 1.0]),
              "dt_bias": inv_softplus(np.array([0.5, 0.3]))})
    return p


def w_deltaproduct(rng, I=5, Dk=3, Dv=4, nh=2):
    return {"W_q": lin(rng, Dk, I), "W_k": lin(rng, nh * Dk, I), "W_v": lin(rng, nh * Dv, I),
            "W_b": lin(rng, nh, I)}


def w_plstm(rng, I=5, Dk=3, Dv=4, J=2):
    p = w_qkv(rng, I, Dk, Dv)
    p.update({"W_S": lin(rng, J, I), "b_S": rng.normal(0, 0.5, J),
              "W_T": rng.normal(0, 1 / math.sqrt(I), (J, J, I)), "b_T": rng.normal(0, 0.5, (J, J)),
              "W_M": lin(rng, J, I), "b_M": rng.normal(0, 0.5, J),
              "w_D": rng.normal(0, 0.5, I), "b_D": np.array(rng.normal(0, 0.5))})
    return p


def w_gam(rng, D=4, Mem=5, K=3):
    return {"causal_conv.weight": rng.normal(0, 1 / math.sqrt(K), (D, 1, K)),
            "causal_conv.bias": rng.normal(0, 0.3, D),
            "memory_bank": rng.normal(0, 1 / math.sqrt(D), (Mem, D)),
            "gate.weight": lin(rng, 2 * D, D), "gate.bias": rng.normal(0, 0.3, 2 * D)}


def w_paragru(rng, I=5, H=4):
    return {"A": rng.uniform(-0.9, 0.9, (3, H)), "B": rng.normal(0, 1 / math.sqrt(I), (1, I, 3, H)),
            "b": rng.normal(0, 0.5, (3, H))}


def w_paralstm(rng, I=5, H=4):
    p = w_paragru(rng, I, H)
    p["C"] = rng.uniform(-0.9, 0.9, (2, H))
    return p


def w_rwkv7(rng, C=4, D_w=3, D_a=2, D_g=3):
    mu = lambda: rng.uniform(0, 1, (1, 1, C))
    p = {"x_r": mu(), "x_w": mu(), "x_k": mu(), "x_v": mu(), "x_a": mu(), "x_g": mu(),
         "w0": rng.normal(0, 1, (1, 1, C)),
         "w1": rng.normal(0, 0.3, (C, D_w)), "w2": rng.normal(0, 0.3, (D_w, C)),
         "a0": rng.normal(0, 0.5, (1, 1, C)),
         "a1": rng.normal(0, 0.3, (C, D_a)), "a2": rng.normal(0, 0.3, (D_a, C)),
         "g1": rng.normal(0, 0.3, (C, D_g)), "g2": rng.normal(0, 0.3, (D_g, C)),
         "k_k": 1 + rng.normal(0, 0.2, (1, 1, C)), "k_a": rng.uniform(0, 1, (1, 1, C)),
         "r_k": rng.normal(0, 0.5, (1, C)),
         "receptance.weight": lin(rng, C, C), "key.weight": lin(rng, C, C),
         "value.weight": lin(rng, C, C), "W_o": lin(rng, C, C),
         "ln_x.weight": 1 + rng.normal(0, 0.2, C), "ln_x.bias": rng.normal(0, 0.2, C)}
    return p


def w_titans(rng, I=5, D=3, Dh=4):
    # rates kept moderate (alpha, eta, theta near 0.5) and the initial
    # memory O(1), so each step's gradient moves the memory visibly.
    return {"W_q": lin(rng, D, I), "W_k": lin(rng, D, I), "W_v": lin(rng, D, I),
            "w_alpha": rng.normal(0, 0.3, I), "w_eta": rng.normal(0, 0.3, I),
            "w_theta": rng.normal(0, 0.3, I), "W1_0": lin(rng, Dh, D), "W2_0": lin(rng, D, Dh)}


def w_plstm2d(rng, I=5, Dk=3, Dv=2):
    w = {"W_q": lin(rng, Dk, I), "W_k": lin(rng, Dk, I), "W_v": lin(rng, Dv, I)}
    for g in "STMDO":
        w["w_" + g] = rng.normal(0, 0.5, I)
        w["b_" + g] = np.array(rng.normal(0, 0.5))
    return w


def w_lightnet(rng, I=5, Dk=3, Dv=2):
    return {"W_q": lin(rng, NH * Dk, I), "W_k": lin(rng, NH * Dk, I), "W_v": lin(rng, NH * Dv, I)}


def w_lm(rng, vocab=11, d_model=4, d_ff=8, dt_rank=1, n_layer=2):
    p = {"embedding.weight": rng.normal(0, 1, (vocab, d_model)),
         "norm_f.weight": 1 + rng.normal(0, 0.2, d_model),
         "lm_head.weight": lin(rng, vocab, d_model)}
    for i in range(n_layer):
        pre = "blocks.%d." % i
        p[pre + "norm.weight"] = 1 + rng.normal(0, 0.2, d_model)
        p[pre + "mlp_norm.weight"] = 1 + rng.normal(0, 0.2, d_model)
        p[pre + "mlp.up.weight"] = lin(rng, d_ff, d_model)
        p[pre + "mlp.down.weight"] = lin(rng, d_model, d_ff)
        for k, v in w_mamba(rng, d_model, 2 * d_model, 16, 4, dt_rank).items():
            p[pre + "mixer." + k] = v
    return p


def in_layer(ref, layer):
    """ref run as layer `layer` of a model: its states are named LAYER.NAME."""
    pre = layer + "."

    def run(p, x, st):
        y, fs = ref(p, x, {k[len(pre):]: v for k, v in st.items()})
        return y, {pre + k: v for k, v in fs.items()}
    return run


# --------------------------------------------------------------- cases
# name: (.seq, weight maker, reference, input feature shape (None: int tokens
# < vocab), initial states {name: shape}, final states written, tol, seed).
# Complex states (LRU, S4D, S5) are neither given nor checked: .npy I/O of
# seqc is real only.

CASES = {
    "std_mingru": ("stdlib/mingru.seq", w_mingru, cells.mingru, (5,), {"h": (4,)}, ["h"], "5e-6", 201),
    "std_minlstm": ("stdlib/minlstm.seq", w_minlstm, cells.minlstm, (5,), {"h": (4,)}, ["h"], "5e-6", 202),
    "std_lru": ("stdlib/lru.seq", w_lru, cells.lru, (4,), {}, [], "5e-6", 203),
    "std_s4d": ("stdlib/s4d.seq", w_s4d, cells.s4d, (4,), {}, [], "5e-6", 204),
    "std_s4": ("stdlib/s4.seq", w_s4, cells.s4, (4,), {}, [], "5e-6", 228),
    "std_s5": ("stdlib/s5.seq", w_s5, cells.s5, (4,), {}, [], "5e-6", 205),
    "std_lssl": ("stdlib/lssl.seq", w_lssl, cells.lssl, (4,), {"s": (4, 3)}, ["s"], "5e-6", 226),
    "std_lssl_zoh": ("stdlib/lssl_zoh.seq", w_lssl, cells.lssl_zoh, (4,), {"s": (4, 3)}, ["s"],
                     "5e-6", 227),
    "std_mamba_ssm": ("stdlib/mamba_ssm.seq", w_mamba_ssm, cells.mamba_ssm, (6,), {"s": (6, 4)}, ["s"], "5e-6", 206),
    "std_mamba": ("stdlib/mamba.seq", w_mamba, cells.mamba, (4,), {"s": (8, 4)}, ["s"], "5e-6", 207),
    "std_mamba2": ("stdlib/mamba2.seq", w_mamba2, cells.mamba2, (4,), {"s": (1, 3, 2, 3)}, ["s"],
                   "5e-6", 208),
    # ngroups = 2, 2 heads per group: the weights cannot tell ngroups (only
    # ngroups * d_state), so the case runs a model fixing it (mamba2_g2.seq).
    "std_mamba2_groups": ("tests/reference/fixtures/std_mamba2_groups/mamba2_g2.seq", w_mamba2_groups,
                          in_layer(functools.partial(cells.mamba2, ngroups=2), "m"), (4,), {"m.s": (2, 2, 2, 3)},
                          ["m.s"], "5e-6", 223),
    # Linear attention and GLA have no per-head weight: the weights fix only
    # NH * Dk, so these cases run a model fixing NH = 2 (CASE_SEQ below).
    "std_linear_attention": ("tests/reference/fixtures/std_linear_attention/la_h2.seq", w_linear_attention,
                             in_layer(functools.partial(cells.linear_attention, nh=NH), "c"), (5,),
                             {"c.S": (NH, 2, 3), "c.z": lambda rng: np.abs(rng.normal(0, 0.5, (B, NH, 3)))},
                             ["c.S", "c.z"], "5e-6", 209),
    "std_retnet": ("stdlib/retnet.seq", w_retnet, cells.retnet, (5,),
                   {"S": (NH, 3, 4), "pos": lambda rng: np.array([5.0, 0.0])}, ["S", "pos"], "5e-6", 210),
    "std_gla": ("tests/reference/fixtures/std_gla/gla_h2.seq", w_gla,
                in_layer(functools.partial(cells.gla, nh=NH), "c"), (5,), {}, [], "5e-6", 211),
    "std_gla_state": ("tests/reference/fixtures/std_gla_state/gla_h2.seq", w_gla,
                      in_layer(functools.partial(cells.gla, nh=NH), "c"), (5,), {"c.S": (NH, 3, 2)},
                      ["c.S"], "1e-5", 224),
    "std_mlstm": ("stdlib/mlstm.seq", w_mlstm_no_bk, cells.mlstm, (5,),
                  {"C": (NH, 3, 3), "n": (NH, 3), "m": (NH,)}, ["C", "n", "m"], "5e-6", 212),
    # b_k != 0: eq. 22 does not scale the key bias.
    "std_mlstm_bias": ("stdlib/mlstm.seq", w_mlstm, cells.mlstm, (5,),
                       {"C": (NH, 3, 3), "n": (NH, 3), "m": (NH,)}, ["C", "n", "m"], "1e-5", 225),
    "std_slstm": ("stdlib/slstm.seq", w_slstm, cells.slstm, (5,),
                  {"h": (4,), "c": (4,), "n": (4,), "m": (4,)}, ["h", "c", "n", "m"], "5e-6", 213),
    "std_deltanet": ("stdlib/deltanet.seq", w_deltanet, cells.deltanet, (5,), {"S": (NH, 2, 3)}, ["S"],
                     "5e-6", 214),
    "std_gated_deltanet": ("stdlib/gated_deltanet.seq", w_gated_deltanet, cells.gated_deltanet, (5,),
                           {"S": (NH, 2, 3)}, ["S"], "5e-6", 215),
    "std_deltaproduct": ("stdlib/deltaproduct.seq", w_deltaproduct, cells.deltaproduct, (5,),
                         {"S": (4, 3)}, ["S"], "1e-5", 216),
    # n_h = 3 Householder factors: the step's loop is unrolled for --dims n_h=3 (DIMS below).
    "std_deltaproduct_n3": ("stdlib/deltaproduct.seq", functools.partial(w_deltaproduct, nh=3),
                            cells.deltaproduct, (5,), {"S": (4, 3)}, ["S"], "1e-5", 224),
    "std_plstm": ("stdlib/plstm.seq", w_plstm, cells.plstm, (5,), {"C": (2, 4, 3)}, ["C"], "5e-6", 217),
    "std_gam": ("stdlib/gam.seq", w_gam, cells.gam, (4,), {}, [], "5e-6", 218),
    "std_paragru": ("stdlib/paragru.seq", w_paragru, cells.paragru, (5,), {"h": (4,)}, ["h"], "5e-6", 219),
    "std_paralstm": ("stdlib/paralstm.seq", w_paralstm, cells.paralstm, (5,),
                     {"c": (4,), "h": (4,)}, ["c", "h"], "5e-6", 220),
    "std_rwkv7": ("stdlib/rwkv7.seq", w_rwkv7, cells.rwkv7, (4,), {"x_prev": (4,), "S": (4, 4)},
                  ["x_prev", "S"], "1e-5", 221),
    "std_titans": ("stdlib/titans.seq", w_titans, cells.titans, (5,),
                   {"W1": (4, 3), "W2": (3, 4), "S1": (4, 3), "S2": (3, 4)},
                   ["W1", "W2", "S1", "S2"], "5e-6", 229),
    # A grid of rows of Y = 4 positions (x [B, rows, 4, I]); lengths count rows.
    "std_plstm2d": ("stdlib/plstm2d.seq", w_plstm2d, cells.plstm2d, (4, 5),
                    {"Cr": (4, 2, 3), "Cd": (4, 2, 3)}, ["Cr", "Cd"], "5e-6", 230),
    # The states (m, E, U) stand for the sums exp(m) E and exp(m) U: the
    # reference turns the given ones into sums; final states are compared
    # through y only (the same sums have many (m, E, U)).
    "std_lightnet": ("stdlib/lightnet.seq", w_lightnet, cells.lightnet, (5,),
                     {"m": (NH, 3), "E": lambda rng: np.abs(rng.normal(0, 1, (B, NH, 3))) + 0.1,
                      "U": (NH, 2, 3)}, [], "5e-6", 231),
    "std_lightnet2d": ("stdlib/lightnet2d.seq", w_lightnet, cells.lightnet2d, (4, 5), {}, [],
                       "5e-6", 232),
    "std_lm": ("examples/lm.seq", w_lm, cells.lm, None, {}, [], "5e-6", 222),
}

# Cases where the reference (paper / reference implementation) and the .seq
# disagree: written only with --pending (into --pending-dir, default
# /tmp/std_pending, never into fixtures/, where test_torch would run them).
# Move one into fixtures/ once the .seq follows the paper. See README.md.
PENDING = {
}


# --dims a case compiles with (a dim the weights cannot change: a loop's count).
DIMS = {"std_deltaproduct_n3": "n_h=3", "std_plstm2d": "Y=4", "std_lightnet": "NH=2",
        "std_lightnet2d": "NH=2,Y=4"}


# .seq files a case writes into its own directory (models fixing a dim the
# weights cannot tell).
CASE_SEQ = {
    "std_linear_attention": """# Linear attention with NH = 2 heads (the weights fix only NH * Dk).
import "std/linear_attention.seq"

model LinearAttentionHeads2(I, Dv) {
  input  x: [I]
  output y: [2*Dv]
  layer c = LinearAttention(I, NH=2, Dv=Dv) prefix ""
  forward {
    y = c(x)
  }
}
""",
    "std_gla": """# GLA with NH = 2 heads (the weights fix only NH * Dk).
import "std/gla.seq"

model GLAHeads2(I, Dv) {
  input  x: [I]
  output y: [2*Dv]
  layer c = GLA(I, NH=2, Dv=Dv) prefix ""
  forward {
    y = c(x)
  }
}
""",
    "std_gla_state": """# GLA with NH = 2 heads (the weights fix only NH * Dk).
import "std/gla.seq"

model GLAHeads2(I, Dv) {
  input  x: [I]
  output y: [2*Dv]
  layer c = GLA(I, NH=2, Dv=Dv) prefix ""
  forward {
    y = c(x)
  }
}
""",
    "std_mamba2_groups": """# Mamba2 with ngroups = 2 (the weights fix only ngroups * d_state).
import "std/mamba2.seq"

model Mamba2G2(d_model) {
  input  x: [d_model]
  output y: [d_model]
  layer m = Mamba2(d_model, ngroups=2) prefix ""
  forward {
    y = m(x)
  }
}
""",
}


def f32(a):
    return np.asarray(a, dtype=np.float32)


def run_reference(ref, params, x, lengths, init):
    """Runs ref over each sequence's valid steps; zero outputs past the end."""
    p = {k: v.astype(np.float64) for k, v in params.items()}
    ys, finals = [], {}
    for b in range(x.shape[0]):
        L = int(lengths[b])
        xb = x[b, :L] if x.dtype.kind == "i" else x[b, :L].astype(np.float64)
        st = {k: v[b].astype(np.float64) for k, v in init.items()}
        y, fs = ref(p, xb, st)
        pad = np.zeros((x.shape[1] - L,) + y.shape[1:])
        ys.append(np.concatenate([y, pad], axis=0))
        for k, v in fs.items():
            finals.setdefault(k, []).append(np.asarray(v))
    return np.array(ys), {k: np.array(v) for k, v in finals.items()}


def case_tol(floor, arrays):
    """The manifest's tolerance: 16 float32 ulps of the largest output value
    (a step chain of ~10 float32 ops per step, rounding errors that mostly
    cancel; measured errors are 1 to 5 ulps), rounded up to 1, 2 or 5 times a
    power of ten, and at least the case's floor (5e-6; 1e-5 for the cells
    whose l2norm eps differs from the paper's exact norm)."""
    need = max(float(floor), 16 * 2.0 ** -24 * max(float(np.max(np.abs(a))) for a in arrays))
    e = math.floor(math.log10(need))
    for m in (1, 2, 5, 10):
        if m * 10.0 ** e >= need * (1 - 1e-9):
            return "%de%d" % (m, e) if m < 10 else "1e%d" % (e + 1)


def make_case(name, root=FIXTURES, table=None):
    from safetensors.numpy import save_file

    seq, wmaker, ref, feat, init_shapes, outs, tol, seed = (table or CASES)[name]
    rng = np.random.default_rng(seed)
    params = {k: f32(v) for k, v in wmaker(rng).items()}
    if feat is None:
        vocab = params["embedding.weight"].shape[0]
        x = rng.integers(0, vocab, (B, T)).astype(np.int64)
    else:
        x = f32(rng.normal(0, 1, (B, T) + feat))
    lengths = np.array(LENGTHS, dtype=np.int64)
    init = {k: f32(s(rng) if callable(s) else rng.normal(0, 0.5, (B,) + s)) for k, s in init_shapes.items()}
    y, finals = run_reference(ref, params, x, lengths, init)

    d = os.path.join(root, name)
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    if name in CASE_SEQ:
        with open(os.path.join(REPO, seq), "w") as f:
            f.write(CASE_SEQ[name])
    save_file({k: np.array(v, order="C") for k, v in sorted(params.items())},
              os.path.join(d, "weights.safetensors"))
    np.save(os.path.join(d, "x.npy"), x)
    np.save(os.path.join(d, "lengths.npy"), lengths)
    lines = ["seq " + seq, "weights weights.safetensors", "in x=x.npy"]
    if name in DIMS:
        lines.append("dims " + DIMS[name])
    for k in init:
        np.save(os.path.join(d, k + "0.npy"), init[k])
        lines.append("in %s=%s0.npy" % (k, k))
    lines.append("in lengths=lengths.npy")
    np.save(os.path.join(d, "y.npy"), f32(y))
    lines.append("out y=y.npy")
    for k in outs:
        np.save(os.path.join(d, k + "_n.npy"), f32(finals[k]))
        lines.append("out %s=%s_n.npy" % (k, k))
    lines.append("tol " + case_tol(tol, [y] + [finals[k] for k in outs]))
    with open(os.path.join(d, "case.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


# ---------------------------------------------------------- self-check


def read_safetensors(path):
    """Parses a safetensors file by hand (F32 only, as written here)."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        assert v["dtype"] == "F32", (path, k)
        a, b = v["data_offsets"]
        out[k] = np.frombuffer(data[8 + n + a:8 + n + b], dtype="<f4").reshape(v["shape"])
    return out


def read_manifest(d):
    ins, outs, tol, seq, dims = {}, {}, None, None, None
    with open(os.path.join(d, "case.txt")) as f:
        for line in f.read().splitlines():
            key, val = line.split(" ", 1)
            if key == "seq":
                seq = val
            elif key == "in":
                n, fn = val.split("=")
                ins[n] = fn
            elif key == "out":
                n, fn = val.split("=")
                outs[n] = fn
            elif key == "tol":
                tol = float(val)
            elif key == "dims":
                dims = val
    return seq, ins, outs, tol, dims


def self_check(names, root=FIXTURES, table=None):
    ok = True
    for name in names:
        d = os.path.join(root, name)
        _, ins, outs, tol, _ = read_manifest(d)
        params = read_safetensors(os.path.join(d, "weights.safetensors"))
        x = np.load(os.path.join(d, ins["x"]))
        lengths = np.load(os.path.join(d, ins["lengths"]))
        init = {k: np.load(os.path.join(d, v)) for k, v in ins.items() if k not in ("x", "lengths")}
        y, finals = run_reference((table or CASES)[name][2], params, x, lengths, init)
        got = {"y": y, **finals}
        err = 0.0
        for k, fn in outs.items():
            ref = np.load(os.path.join(d, fn))
            err = max(err, float(np.max(np.abs(ref - got[k]))))
        for b, L in enumerate(lengths):
            if np.any(np.load(os.path.join(d, outs["y"]))[b, L:] != 0):
                err = float("inf")
        size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
        good = err <= tol / 4 and size < MAX_BYTES
        ok &= good
        print("%-22s self-check err %.2e  size %5d B  %s" % (name, err, size, "ok" if good else "FAIL"))
    return ok


# ---------------------------------------------------------------- seqc


def run_seqc(seqc, names, root=FIXTURES, table=None):
    """Runs each case through `seqc run --expect` with both backends (float32,
    the test's check; the CPU backend may refuse a cell), and again with --f64 writing its outputs, which are compared with
    the float64 reference directly: an f64 difference near 1e-12 says the two
    compute the same function, so the f32 one is rounding alone."""
    import tempfile

    rows = []
    for name in names:
        d = os.path.join(root, name)
        seq, ins, outs, tol, dims = read_manifest(d)
        cmd = [seqc, "run", os.path.join(REPO, seq), "--weights", os.path.join(d, "weights.safetensors")]
        if dims:
            cmd += ["--dims", dims]
        for k, v in ins.items():
            cmd += ["--in", "%s=%s" % (k, os.path.join(d, v))]
        exp = []
        for k, v in outs.items():
            exp += ["--expect", "%s=%s" % (k, os.path.join(d, v))]
        e32, txt, rc = {}, "", 0
        for backend in ("interp", "cpu"):
            r = subprocess.run(cmd + exp + ["--tol", "1e30", "--quiet", "--backend=" + backend],
                               capture_output=True, text=True)
            diffs = [float(v) for v in re.findall(r"max abs error ([0-9.eE+-]+|nan|inf)", r.stdout + r.stderr)]
            if "does not support" in r.stderr and backend == "cpu":
                e32[backend] = None  # the CPU backend refuses it (complex states): not an error here
                continue
            e32[backend] = max(diffs) if diffs and r.returncode == 0 else float("nan")
            if r.returncode != 0:
                txt, rc = r.stdout + r.stderr, r.returncode
        e64 = float("nan")
        with tempfile.TemporaryDirectory() as tmp:
            o64 = []
            for k in outs:
                o64 += ["--out", "%s=%s" % (k, os.path.join(tmp, k + ".npy"))]
            r64 = subprocess.run(cmd + o64 + ["--f64", "--quiet", "--backend=interp"], capture_output=True, text=True)
            if r64.returncode == 0:
                params = read_safetensors(os.path.join(d, "weights.safetensors"))
                x = np.load(os.path.join(d, ins["x"]))
                lengths = np.load(os.path.join(d, ins["lengths"]))
                init = {k: np.load(os.path.join(d, v)) for k, v in ins.items() if k not in ("x", "lengths")}
                y, finals = run_reference((table or CASES)[name][2], params, x, lengths, init)
                got = {"y": y, **finals}
                e64 = max(float(np.max(np.abs(np.load(os.path.join(tmp, k + ".npy")) - got[k])))
                          for k in outs)
        worst = max(v for v in e32.values() if v is not None)
        verdict = "ok" if rc == 0 and worst <= tol else "FAIL"
        rows.append((name, e32, e64, tol, verdict))
        fmt = lambda v: "refused " if v is None else "%.2e" % v
        print("%-22s interp %s  cpu %s  interp --f64 %.2e  tol %.0e  %s"
              % (name, fmt(e32["interp"]), fmt(e32["cpu"]), e64, tol, verdict))
        if rc != 0:
            print("   " + txt.strip().replace("\n", "\n   "))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", help="case name (repeatable)")
    ap.add_argument("--self-check", action="store_true", help="only re-check the fixtures on disk")
    ap.add_argument("--seqc", help="path to seqc: also run every case through it")
    ap.add_argument("--pending", action="store_true",
                    help="write/check the PENDING cases (disagreements) instead, into --pending-dir")
    ap.add_argument("--pending-dir", default="/tmp/std_pending")
    a = ap.parse_args()
    table, root = (PENDING, a.pending_dir) if a.pending else (CASES, FIXTURES)
    names = a.only or list(table)
    for n in names:
        if n not in table:
            ap.error("unknown case " + n)
    if not a.self_check:
        for n in names:
            make_case(n, root, table)
    ok = self_check(names, root, table)
    if a.seqc:
        run_seqc(a.seqc, names, root, table)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
