"""Triton kernels of the `triton` attention backend: split-KV decode, variable-length extend and
split-KV speculative verify (draft trees).

Importing this package imports triton; the backend module imports it only when it is constructed.
The kernels read K/V straight from the token-slot KV pool through the request-to-token table, so
they work for any page size.
"""
from jackfield_plugins.attention.triton_kernels.decode import decode_attention
from jackfield_plugins.attention.triton_kernels.extend import extend_attention
from jackfield_plugins.attention.triton_kernels.verify import verify_attention

__all__ = ["decode_attention", "extend_attention", "verify_attention"]
