"""seqc: compile .seq sequence models and run them on NumPy arrays and CPU
torch tensors. See docs/python.md.

    import seqc, torch
    lstm = torch.nn.LSTM(32, 64, batch_first=True)
    m = seqc.compile("examples/lstm.seq", weights=lstm.state_dict())
    y = m(torch.randn(4, 50, 32))
"""
import os as _os

_here = _os.path.dirname(_os.path.abspath(__file__))
# The wheel carries the standard library of cells; imports look there unless
# $SEQ_STDLIB says otherwise.
_std = _os.path.join(_here, "share", "seqc", "stdlib")
if "SEQ_STDLIB" not in _os.environ and _os.path.isdir(_std):
    _os.environ["SEQ_STDLIB"] = _std

from ._module import (CompileError, ContextSpec, Diagnostic, Module, RunError,  # noqa: E402
                      SeqError, TensorSpec, WeightError, compile, load_so, newton_stats)
from ._lib import path as library_path  # noqa: E402

__version__ = "0.1.0"
__all__ = ["compile", "load_so", "Module", "SeqError", "CompileError", "WeightError",
           "RunError", "Diagnostic", "TensorSpec", "ContextSpec", "library_path", "newton_stats"]
