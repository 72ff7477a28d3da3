"""torch_step.py - PyTorch CPU baseline for bench_step.c: one step of
nn.LSTM / nn.GRU (I=H=256, batch_first, input [B, 1, I] with the state fed
back), the way token-by-token inference runs it, for B in {1, 8, 64}.

usage: python torch_step.py THREADS [REPS]
Prints "torch <model> threads=N B=b step_us=<median> min_us=<min>": each timed
run chains 256 steps; the median over REPS runs of the mean step time.
"""
import statistics
import sys
import time

import torch


def main():
    threads = int(sys.argv[1])
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    torch.set_num_threads(threads)
    I = H = 256
    torch.manual_seed(0)
    for name, cls in (("LSTM", torch.nn.LSTM), ("GRU", torch.nn.GRU)):
        net = cls(I, H, batch_first=True).eval()
        for B in (1, 8, 64):
            x = torch.randn(B, 1, I)
            h = torch.zeros(1, B, H)
            state = (h, torch.zeros(1, B, H)) if name == "LSTM" else h
            times = []
            with torch.inference_mode():
                for r in range(reps + 1):  # the first run is a warm-up
                    s = state
                    t0 = time.perf_counter()
                    for _ in range(256):
                        _, s = net(x, s)
                    if r > 0:
                        times.append((time.perf_counter() - t0) / 256)
            print(f"torch {name} threads={threads} B={B} "
                  f"step_us={statistics.median(times) * 1e6:.1f} min_us={min(times) * 1e6:.1f}",
                  flush=True)


if __name__ == "__main__":
    main()
