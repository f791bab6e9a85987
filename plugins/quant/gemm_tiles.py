"""The program order shared by the quantization GEMM kernels (Triton): programs walk the output in
groups of GROUP_M row tiles, column tile by column tile, so programs running together share the
weight tiles they read in L2."""
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


def grid_size(m: int, n: int, block_m: int, block_n: int) -> tuple[int]:
    return (triton.cdiv(m, block_m) * triton.cdiv(n, block_n),)
