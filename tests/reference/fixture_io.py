"""What the fixture writers share: a case directory written whole (weights,
arrays, manifest) and the weights read back without torch or safetensors (so
the --self-checks need only NumPy)."""
import json
import os
import struct

import numpy as np


def write_case(out, weights, arrays, manifest):
    """Writes fixture directory `out` afresh: weights.safetensors (the dict
    `weights`, float32, in name order), NAME.npy per entry of `arrays`, and
    case.txt with the text `manifest`. Files of an earlier version are
    removed, so a regenerated case never keeps stale ones."""
    from safetensors.numpy import save_file

    os.makedirs(out, exist_ok=True)
    for f in os.listdir(out):
        os.remove(os.path.join(out, f))
    save_file(dict(sorted(weights.items())), os.path.join(out, "weights.safetensors"))
    for k, v in arrays.items():
        np.save(os.path.join(out, k + ".npy"), v)
    with open(os.path.join(out, "case.txt"), "w") as f:
        f.write(manifest)


def read_safetensors(path):
    """The tensors of a safetensors file of float32 tensors, as NumPy arrays."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        head = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in head.items():
        if k == "__metadata__":
            continue
        assert v["dtype"] == "F32", "%s is %s, want F32" % (k, v["dtype"])
        a, b = v["data_offsets"]
        out[k] = np.frombuffer(data[a:b], dtype="<f4").reshape(v["shape"])
    return out


def report(name, d, err, tol):
    """Prints a self-check's line for case directory d (its worst error
    against the float64 recomputation, which must be within tol / 4) and
    returns whether it passed."""
    good = err <= tol / 4
    size = sum(os.path.getsize(os.path.join(d, n)) for n in os.listdir(d))
    print("%s self-check err %.2e %s (%d bytes)" % (name, err, "ok" if good else "FAIL", size))
    return good


def main(doc, write, self_check):
    """A fixture writer's command line: write (with torch, one thread: one
    summation order whatever the machine), then self-check; --self-check
    only checks what is on disk (NumPy alone). Returns the exit status."""
    import argparse

    ap = argparse.ArgumentParser(description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--self-check", action="store_true")
    args = ap.parse_args()
    if not args.self_check:
        import torch

        torch.set_num_threads(1)
        write()
    return 0 if self_check() else 1
