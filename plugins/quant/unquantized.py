"""The default quantization method: plain weights in the compute dtype, y = x W^T + b."""
import torch
import torch.nn.functional as F
from torch import nn

from jackfield.sdk import LinearMethod, QuantizationMethod, hookimpl


class UnquantizedLinearMethod(LinearMethod):
    def create_weights(self, layer, in_features, out_features, bias, dtype, device):
        layer.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=dtype, device=device), requires_grad=False)
        layer.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device), requires_grad=False) if bias else None

    def apply(self, layer, x):
        return F.linear(x, layer.weight, layer.bias)


class Unquantized(QuantizationMethod):
    name = "unquantized"
    priority = 0
    checkpoint_formats = (None,)
    description = "Plain weights in the compute dtype"

    def linear_method(self, prefix):
        return UnquantizedLinearMethod()


@hookimpl
def jackfield_register_quantization_methods(register):
    register(Unquantized)
