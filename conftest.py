"""Test-session set-up shared by tests/, the bnlib doctests and nbval's collection.

torch's compiler stack (torch._dynamo, which loads Triton) segfaults when it is
first loaded after TensorFlow in the same process, and torch loads it lazily on
the first optimizer step. The tests import both frameworks in one process, so
load it first. bnlib.keras does the same for readers (bnlib/keras/_backend.py).
"""

import importlib.util

if importlib.util.find_spec("torch") is not None:
    import torch._dynamo  # noqa: F401
