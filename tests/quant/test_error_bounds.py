"""Every registered quantization method keeps its declared `max_relative_error` on a layer of
Gaussian weights and inputs (CPU), the bound the conformance kit's quantization suite checks."""
from __future__ import annotations

import pytest

from quant_harness import LAYER_CONFIGS, gaussian_layer_error


def quantization_methods():
    from jackfield.plugins import load_plugins
    from jackfield.registry import build_registry

    return build_registry(*load_plugins(env={})).of_kind("quantization")


@pytest.mark.parametrize("info", quantization_methods(), ids=lambda i: i.name)
def test_layer_error_within_declared_bound(info):
    if not info.availability().ok:
        pytest.skip(info.availability().reason)
    bound = info.cls.max_relative_error
    assert 0 < bound < 1, f"{info.name} declares max_relative_error {bound}"
    errors = [gaussian_layer_error(info.cls, LAYER_CONFIGS[info.name], seed=s) for s in range(2)]
    assert max(errors) <= bound, f"{info.name}: relative error {max(errors):.4f} above its bound {bound}"
    # the bound is honest, not loose: within 4x of what the method achieves (or tiny, for float)
    assert bound <= max(4 * max(errors), 1e-4), f"{info.name}: bound {bound} far above the measured {max(errors):.4f}"
