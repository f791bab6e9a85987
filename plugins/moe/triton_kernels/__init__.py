"""Triton kernels of the `triton` MoE dispatcher: fused routing, moe_align_block_size, and the
grouped expert GEMMs (with their GEMV form for small batches). Importing this package imports
triton; the dispatcher imports it only when it is constructed."""
from jackfield_plugins.moe.triton_kernels.align import moe_align_block_size
from jackfield_plugins.moe.triton_kernels.configs import pick_config
from jackfield_plugins.moe.triton_kernels.experts import fused_experts, fused_moe_gemv
from jackfield_plugins.moe.triton_kernels.routing import fused_routing, fused_routing_supported

__all__ = ["fused_experts", "fused_moe_gemv", "fused_routing", "fused_routing_supported", "moe_align_block_size", "pick_config"]
