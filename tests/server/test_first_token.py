"""The stages of a request's time to first token (jackfield.server.first_token)."""
from __future__ import annotations

import pytest

from jackfield.server.first_token import STAGES, first_token_stages


def test_stages_split_the_path_between_the_stamps():
    stages = first_token_stages(arrived=10.0, sent=10.003, timing=(10.004, 10.011, 10.041), delivered=10.042,
                                tokenizing=0.001)
    assert set(stages) == set(STAGES)
    assert stages == pytest.approx({"http": 0.002, "tokenize": 0.001, "to_scheduler": 0.001, "queue": 0.007, "prefill": 0.030,
                                    "to_server": 0.001})
    assert sum(stages.values()) == pytest.approx(10.042 - 10.0)  # together: the server's TTFT


def test_no_http_stage_without_an_http_arrival_and_no_negative_stage():
    # a request submitted in-process has no arrival; a stage cannot come out negative
    stages = first_token_stages(arrived=None, sent=5.0, timing=(4.9999, 5.001, 5.002), delivered=5.003)
    assert "http" not in stages and "tokenize" not in stages and stages["to_scheduler"] == 0.0
