"""The conformance kit on the example backend: one test per behaviour an attention backend must have."""
import pytest

from jackfield_example_plugin.sdpa import ExampleSDPABackend


@pytest.mark.jackfield_kit(component=ExampleSDPABackend, device="cpu")
def test_conformance(kit_check):
    kit_check.run()
