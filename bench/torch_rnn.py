"""torch_rnn.py - PyTorch CPU forward time of nn.LSTM / nn.GRU at T=1024,
I=H=256, batch_first, for B in {1, 8, 64}: the baseline for bench_rnn.c.

usage: python torch_rnn.py THREADS [REPS [MODEL B]]   (MODEL LSTM or GRU: that shape only;
MODEL none: the header line only)
Prints one header line (version, BLAS, threads) and one line per model and B,
in the same shape as bench_rnn: "<model> threads=N B=b forward_ms=<median> reps=n".

On a loaded machine PyTorch's two OpenMP threads can take seconds to minutes
per forward (the threads spin at barriers on a CPU someone else holds), so
each shape gets a time budget ($TORCH_SHAPE_BUDGET_S, default 20 s): timed
runs stop once it is spent (at least one), and a warm-up that alone takes
longer than the budget is itself the one sample (printed as reps=0).
"""
import os
import statistics
import sys
import time

import torch


def main():
    threads = int(sys.argv[1])
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    budget = float(os.environ.get("TORCH_SHAPE_BUDGET_S", "20"))
    torch.set_num_threads(threads)
    blas = "mkl" if torch.backends.mkl.is_available() else "other"
    print(f"torch version={torch.__version__} blas={blas} "
          f"mkldnn={torch.backends.mkldnn.is_available()} threads={torch.get_num_threads()} "
          f"cpu_capability={torch.backends.cpu.get_cpu_capability()}")
    T, I, H = 1024, 256, 256
    torch.manual_seed(0)
    models = (("LSTM", torch.nn.LSTM), ("GRU", torch.nn.GRU))
    batches = (1, 8, 64)
    if len(sys.argv) > 4:
        models = tuple(m for m in models if m[0] == sys.argv[3].upper())
        batches = (int(sys.argv[4]),)
    for name, cls in models:
        net = cls(I, H, batch_first=True).eval()
        for B in batches:
            x = torch.randn(B, T, I)
            times = []
            with torch.inference_mode():
                start = time.perf_counter()
                net(x)  # warm-up
                warm = time.perf_counter() - start
                if warm > budget:
                    times.append(warm)
                else:
                    for _ in range(reps):
                        t0 = time.perf_counter()
                        net(x)
                        times.append(time.perf_counter() - t0)
                        if time.perf_counter() - start > budget:
                            break
            n = 0 if warm > budget else len(times)
            print(f"torch {name} threads={threads} B={B} "
                  f"forward_ms={statistics.median(times) * 1e3:.2f} reps={n}", flush=True)


if __name__ == "__main__":
    main()
