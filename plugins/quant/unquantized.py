"""The default quantization method: plain weights in the compute dtype, y = x W^T + b.

Single-row inputs on CUDA (batch-1 decode) go through the SDK's `Gemv`, which uses a Triton GEMV
for the weight shapes where it measured faster than cuBLAS, with the RMSNorm before qkv/gate_up and
the SiLU-and-mul before down_proj fused into it where that measured faster than two kernels."""
from jackfield.sdk import Gemv, PlainLinearMethod, QuantizationMethod, hookimpl


class UnquantizedLinearMethod(PlainLinearMethod):
    def __init__(self, gemv: Gemv):
        self.gemv = gemv

    def apply(self, layer, x):
        return self.gemv.linear(x, layer.weight, layer.bias)

    def apply_normed(self, layer, x, residual, norm):
        fused = self.gemv.normed_linear(x, residual, norm.weight, norm.eps, layer.weight, layer.bias)
        return fused if fused is not None else super().apply_normed(layer, x, residual, norm)

    def apply_silu_mul(self, layer, x):
        fused = self.gemv.silu_mul_linear(x, layer.weight, layer.bias)
        return fused if fused is not None else super().apply_silu_mul(layer, x)


class Unquantized(QuantizationMethod):
    name = "unquantized"
    priority = 0
    checkpoint_formats = (None,)
    description = "Plain weights in the compute dtype"
    max_relative_error = 1e-5  # float32 reordering only (the kit runs float32 on CPU)

    def __init__(self, model_config, options=None):
        super().__init__(model_config, options)
        self.gemv = Gemv()  # shared by every layer of this engine: one timing per weight shape

    def linear_method(self, prefix):
        return UnquantizedLinearMethod(self.gemv)


@hookimpl
def jackfield_register_quantization_methods(register):
    register(Unquantized)
