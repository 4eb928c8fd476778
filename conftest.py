"""Test-session set-up shared by tests/, the bnlib doctests and nbval's collection.

Triton (which torch loads lazily, through torch._dynamo, on the first
optimizer step) segfaults when it is first loaded after TensorFlow in the same
process. The tests import both frameworks in one process, so load it first;
bnlib.keras does the same for readers (bnlib/keras/_backend.py).
"""

from bnlib.keras._backend import _load_triton_before_tensorflow

_load_triton_before_tensorflow()
