"""The components the kit runs a model architecture with: reference attention and plain weights.

Both are plain PyTorch over `jackfield.sdk.reference`, so a model's check depends on no other
plugin. They are never registered with the plugin manager; the model suite hands them to the
engine's own startup code through an in-process plugin (see suites/model.py).
"""
from __future__ import annotations

import torch.nn.functional as F

from jackfield.sdk import (AttentionBackend, Capabilities, LinearMethod, QuantizationMethod, create_plain_weights,
                           reference)


class KitReferenceAttention(AttentionBackend):
    name = "kit_reference"
    priority = 1000  # the kit prefers it to any real backend that is also offered
    capabilities = Capabilities(features=frozenset({"paged", "sliding_window", "logit_cap", "mixed"}))
    description = "float32 reference attention of the conformance kit"

    def forward_extend(self, q, layer, fb):
        return reference.paged_attention(q, layer, fb).to(q.dtype)

    def forward_decode(self, q, layer, fb):
        return reference.paged_attention(q, layer, fb).to(q.dtype)


class PlainLinearMethod(LinearMethod):
    def create_weights(self, layer, in_features, out_features, bias, dtype, device):
        create_plain_weights(layer, in_features, out_features, bias, dtype, device)

    def apply(self, layer, x):
        return F.linear(x, layer.weight, layer.bias)


class KitPlainWeights(QuantizationMethod):
    name = "kit_plain"
    checkpoint_formats = (None,)
    description = "plain weights, F.linear (conformance kit)"

    def linear_method(self, prefix):
        return PlainLinearMethod()
