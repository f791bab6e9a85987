"""Late launch on CUDA: the stream launcher times each job with CUDA events, the scheduler predicts
the end of the running decode step from them, and outputs are the same with it on and off."""
import time

import pytest
import torch

from jackfield.io_struct import TokenizedGenerateReq
from jackfield.sampling.params import SamplingParams

from test_decode_no_sync import tiny_config, tiny_scheduler

pytestmark = pytest.mark.gpu


def _decode(sched, steps: int) -> list[tuple[float, float, float]]:
    """Decode three requests; (deadline, time asked, predicted step) at every step that had one."""
    for i in range(3):
        params = SamplingParams(max_new_tokens=48, temperature=0.0, ignore_eos=True)
        sched.handle(TokenizedGenerateReq(f"r{i}", [5 + i] * (20 + i), params))
    deadlines = []
    for _ in range(steps):
        sched.step()
        deadline = sched.launch_deadline()
        if deadline is not None:
            deadlines.append((deadline, time.monotonic(), sched.clock.step_s(sched.clock.running_batch)))
    while sched.has_work():
        sched.step()
    return deadlines


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_jobs_are_timed_and_the_deadline_falls_inside_the_running_step(tmp_path):
    sched = tiny_scheduler(tmp_path)
    try:
        assert sched.overlap and sched.clock is not None
        deadlines = _decode(sched, steps=20)
        assert deadlines, "no decode step was ever predicted"
        for deadline, now, step in deadlines:
            assert 0 < step < 1.0  # device seconds of a tiny model's decode step
            assert deadline < now + step  # never later than the end of a step that starts now
    finally:
        sched.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_outputs_equal_with_and_without_late_launch(tmp_path):
    from jackfield.engine import Engine

    outs = {}
    for late in (True, False):
        with Engine(model=tiny_config(tmp_path), load_format="dummy", attention_backend="triton",
                    max_total_tokens=8192, disable_late_launch=not late) as eng:
            outs[late] = [o["token_ids"] for o in eng.generate([[3 + i] * (4 + i) for i in range(6)],
                                                               {"max_new_tokens": 24, "temperature": 0.0})]
    assert outs[True] == outs[False]

