"""What the quantization GEMM kernels (Triton) share: the program order (programs walk the output in
groups of GROUP_M row tiles, column tile by column tile, so programs running together share the
weight tiles they read in L2), the output tile of a program and its epilogue (bias, store); and
what the word-level GEMVs share: x split into the code positions of its words."""
import triton
import triton.language as tl


@triton.jit
def grouped_tile(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(row tile, column tile) of program `pid` over an M x N output."""
    num_m, num_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    rows_in_group = tl.minimum(num_m - first_m, GROUP_M)
    return first_m + (pid % per_group) % rows_in_group, (pid % per_group) // rows_in_group


@triton.jit
def output_tile(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(rows, columns, row mask, column mask) of this program's output tile."""
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    return offs_m, offs_n, offs_m < M, offs_n < N


@triton.jit
def store_tile(y_ptr, acc, b_ptr, offs_m, offs_n, m_mask, n_mask, stride_ym, HAS_BIAS: tl.constexpr):
    """y[offs_m, offs_n] = acc (float32) + bias[offs_n], in y's dtype."""
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    y_ptrs = y_ptr + offs_m[:, None].to(tl.int64) * stride_ym + offs_n[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


@triton.jit
def word_slots(x, GPC: tl.constexpr, WPG: tl.constexpr):
    """x [GPC, WPG, 8] (eight values a word of eight 4-bit codes) split in registers into the values of
    each code position, slot 4a + 2b + c: (x0, ..., x7), each [GPC, WPG]."""
    c0, c1 = tl.split(tl.reshape(x, [GPC, WPG, 2, 2, 2]))
    b0c0, b1c0 = tl.split(c0)
    b0c1, b1c1 = tl.split(c1)
    x0, x4 = tl.split(b0c0)
    x2, x6 = tl.split(b1c0)
    x1, x5 = tl.split(b0c1)
    x3, x7 = tl.split(b1c1)
    return x0, x1, x2, x3, x4, x5, x6, x7


def grid_size(m: int, n: int, block_m: int, block_n: int) -> tuple[int]:
    return (triton.cdiv(m, block_m) * triton.cdiv(n, block_n),)
