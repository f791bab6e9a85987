"""Triton kernels of the `triton` attention backend: split-KV decode and variable-length extend.

Importing this package imports triton; the backend module imports it only when it is constructed.
Both kernels read K/V straight from the token-slot KV pool through the request-to-token table, so
they work for any page size.
"""
from jackfield_plugins.attention.triton_kernels.decode import decode_attention
from jackfield_plugins.attention.triton_kernels.extend import extend_attention

__all__ = ["decode_attention", "extend_attention"]
