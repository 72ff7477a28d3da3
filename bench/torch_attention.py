#!/usr/bin/env python3
"""One timed call of PyTorch's causal scaled_dot_product_attention, for
bench/attention.sh: usage torch_attention.py B NH T DH THREADS (prints ms)."""
import sys
import time

import torch
import torch.nn.functional as F

B, NH, T, DH, threads = (int(a) for a in sys.argv[1:6])
torch.set_num_threads(threads)
g = torch.Generator().manual_seed(0)
q, k, v = (torch.randn(B, NH, T, DH, generator=g) for _ in range(3))
F.scaled_dot_product_attention(q, k, v, is_causal=True)  # warm-up
t = time.perf_counter()
F.scaled_dot_product_attention(q, k, v, is_causal=True)
print("torch_ms=%.3f" % ((time.perf_counter() - t) * 1e3))
