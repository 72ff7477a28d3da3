#!/usr/bin/env python3
"""Compare two .npy files and print the largest absolute difference (for humans).

    python3 tests/reference/check_npy.py A.npy B.npy [--tol 1e-5]

Exit status: 0 if the shapes match (and, with --tol, the error is within it), 1 otherwise.
Needs only numpy.
"""
import argparse
import sys

import numpy as np


def main():
    ap = argparse.ArgumentParser(description="max |a - b| of two .npy files")
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--tol", type=float, help="fail if the max abs error exceeds this")
    args = ap.parse_args()
    a, b = np.load(args.a), np.load(args.b)
    print("%s: %s %s" % (args.a, list(a.shape), a.dtype))
    print("%s: %s %s" % (args.b, list(b.shape), b.dtype))
    if a.shape != b.shape:
        print("shapes differ")
        return 1
    if a.size == 0:
        print("max abs error 0 (empty)")
        return 0
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    where = np.unravel_index(np.nanargmax(d) if not np.all(np.isnan(d)) else 0, d.shape)
    err = float(np.max(d))  # NaN anywhere makes this NaN, which then fails --tol
    print("max abs error %.6g at %s" % (err, list(map(int, where))))
    if args.tol is not None and not err <= args.tol:
        print("exceeds tol %g" % args.tol)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
