"""tinygemm's INT4 layout (int4_tinygemm.py) on the CPU: `pack` against a line-by-line rendering of
PyTorch's CUDA conversion kernel (matrix_to_m16n8k16_Bint4_layout, 8 inner k-tiles), its inverse,
the column each code holds, and the (scale, offset) table; a CPU layer keeps the internal layout.
The GPU test (tests/gpu/test_quant_kernels.py) checks `pack` against the conversion itself, and
the Triton interpreter test (tests/plugins/test_quant_kernels_interpret.py) the dequantize kernel
on this layout."""
from __future__ import annotations

import torch

from jackfield_plugins.quant import int4_numerics as int4
from jackfield_plugins.quant import int4_tinygemm as tinygemm


def convert_like_cuda(q: torch.Tensor, inner_k_tiles: int = 8) -> torch.Tensor:
    """The CUDA kernel's loops, per (k outer tile, n tile, lane, inner k-tile pair), over bytes that
    hold column 2i in their high nibble and 2i + 1 in their low one."""
    n, k = q.shape
    pairs = ((q[:, 0::2] << 4) | q[:, 1::2]).tolist()
    out = torch.zeros(n // 8, k // (inner_k_tiles * 16), 32, inner_k_tiles // 2, dtype=torch.int64)
    for k_outer in range(out.shape[1]):
        for n_tile in range(n // 8):
            for t in range(32):
                for inner in range(0, inner_k_tiles, 2):
                    n0 = n_tile * 8 + t // 4
                    base0 = (k_outer * inner_k_tiles + inner) * 16 // 2
                    ks = [base0 + t % 4, base0 + t % 4 + 4, base0 + 8 + t % 4, base0 + 8 + t % 4 + 4]
                    v = [pairs[n0][i] for i in ks]
                    word = ((v[3] & 0xF) << 28 | (v[2] & 0xF) << 24 | (v[1] & 0xF) << 20 | (v[0] & 0xF) << 16
                            | (v[3] & 0xF0) << 8 | (v[2] & 0xF0) << 4 | (v[1] & 0xF0) | (v[0] & 0xF0) >> 4)
                    out[n_tile, k_outer, t, inner // 2] = word
    return out.to(torch.int32)  # two's complement, as the kernel's int32


def test_pack_matches_the_cuda_conversion_and_unpacks():
    q = torch.randint(0, 16, (16, 256), generator=torch.Generator().manual_seed(0), dtype=torch.int32)
    words = tinygemm.pack(q)
    assert words.shape == (2, 2, 32, 4) and torch.equal(words, convert_like_cuda(q))
    assert torch.equal(tinygemm.unpack(words, 16, 256), q)


def test_virtual_columns_permute_within_128_column_blocks():
    v = torch.arange(512)
    cols = tinygemm.column_of(v)
    assert torch.equal(torch.sort(cols).values, v)
    assert torch.equal(cols // 128, v // 128)  # a group of 128 or 256 is the same in both orders
    assert not torch.equal(cols, v)


def test_scale_table_dequantizes_like_the_layer():
    gen = torch.Generator().manual_seed(1)
    q, s, z = int4.quantize(torch.randn(8, 256, generator=gen), 128)
    table = tinygemm.scale_table(s.half(), z.half())
    assert table.shape == (2, 8, 2) and table.dtype == torch.bfloat16
    g = torch.arange(256) // 128
    w = (q.float() - 8) * table[g, :, 0].t().float() + table[g, :, 1].t().float()
    ref = int4.dequantize(q, s.half(), z.half(), None)
    assert ((w - ref).abs() / s.repeat_interleave(128, 1)).max() < 0.04  # bf16 scale and offset: 2^-8 of 8 s


def test_a_cpu_layer_keeps_the_internal_layout():
    from quant_harness import LAYER_CONFIGS, make_linear

    from jackfield_plugins.quant.awq import Awq

    layer = make_linear(Awq, torch.randn(64, 256).bfloat16(), LAYER_CONFIGS["awq"])
    assert layer.qweight.shape == (64, 256 // 8) and layer.tinygemm_table is None
    assert not tinygemm.fits(torch.device("cpu"), torch.bfloat16, 64, 256, 128)
