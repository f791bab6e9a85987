"""What the engine makes of a drafter with a given accepted length, on any model shape (dummy weights too).

  python3 benchmarks/spec_oracle.py --model benchmarks/configs/llama-3.1-8b.json --load-format dummy \\
      --tokenizer DIR --attention-backend triton [--batch-sizes 1,16] [--accept-lengths 1,2,3,5,8] \\
      [--output-len 128] [--out FILE]

Every prompt is first decoded plainly (greedy, the reference). Then, per accepted length a, each
speculative step drafts for every request a chain of `num_draft_tokens - 1` tokens: the reference's
next a - 1 tokens, then wrong ones. Each verify forward then emits a tokens per request (fewer
near the end of a request), so tok/s against plain decoding is the speedup a drafter with accepted
length a gives on this shape, all host work (drafting aside) and the verify forward's cost included.
With dummy weights no real drafter is accepted (the output repeats nothing); this is what such a
model shape can show. a = 1 rejects every draft: the cost of a verify step that gains nothing. The
load policy is off (every step verifies), and greedy outputs are checked against the reference.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace

from jackfield.bench.common import provenance
from jackfield.bench.spec import run_closed_loop
from jackfield.bench.spec_workloads import prompts
from jackfield.cli.settings_args import add_settings_arguments, cli_overrides
from jackfield.config import load_settings
from jackfield.engine_loop import build_scheduler
from jackfield.sampling.params import SamplingParams
from jackfield.sdk import DraftProposal, SpecInput, SpeculativeDecoder


class OracleDecoder(SpeculativeDecoder):
    """Drafts the reference output's next `accept - 1` tokens, then wrong tokens up to the budget."""

    name = "oracle"

    def __init__(self, runtime, references: dict[str, list[int]], accept: int):
        super().__init__(runtime)
        self.refs, self.accept, self.vocab = references, accept, runtime.model_config.vocab_size

    def propose(self, spec_input: SpecInput) -> DraftProposal:
        rows = []
        for rid, ids, budget in zip(spec_input.req_ids, spec_input.token_ids, spec_input.max_drafts):
            ref = self.refs[rid]
            nxt = ref[len(ids):len(ids) + budget]
            right = nxt[:self.accept - 1]
            wrong = [(t + 1) % self.vocab for t in nxt[len(right):]]
            rows.append((right + wrong + [0] * budget)[:budget])
        return DraftProposal.from_lists(rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-sizes", default="1")
    p.add_argument("--accept-lengths", default="1,2,3,5,8", help="tokens emitted per verify forward per request")
    p.add_argument("--workload", default="rewrite", choices=["rewrite", "quotes", "chat"])
    p.add_argument("--num-prompts", type=int, default=0, help="prompts per batch size (default: max(4, 2 x bs))")
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--out", default=None)
    add_settings_arguments(p)
    args = p.parse_args()
    sizes = [int(x) for x in args.batch_sizes.split(",")]
    overrides = {"max_running_requests": max(sizes), **cli_overrides(args), "speculative_algorithm": "ngram",
                 "speculative_load_aware": False}
    sched, info = build_scheduler(load_settings(args.config_file, overrides).settings, progress=False)
    spec = sched.spec
    plain = SamplingParams(max_new_tokens=args.output_len, temperature=0.0, speculative=False, ignore_eos=True)
    run_closed_loop(sched, prompts(sched.tokenizer, "chat", 2), 2, replace(plain, max_new_tokens=8))  # warm-up
    results = []
    for bs in sizes:
        ids = prompts(sched.tokenizer, args.workload, args.num_prompts or max(4, 2 * bs))
        t_off, _, out_off = run_closed_loop(sched, ids, bs, plain)
        refs = {f"q{i}": list(prompt) + out_off[f"q{i}"] for i, prompt in enumerate(ids)}
        tokens = sum(map(len, out_off.values()))
        for a in [int(x) for x in args.accept_lengths.split(",")]:
            spec.decoder = OracleDecoder(spec.decoder.runtime, refs, a)
            sched.releaser.on_leave = spec.decoder.release
            st = spec.stats
            before = (st.verify_steps, st.emitted)
            t_on, _, out_on = run_closed_loop(sched, ids, bs, replace(plain, speculative=True))
            steps, emitted = st.verify_steps - before[0], st.emitted - before[1]
            results.append({"batch_size": bs, "accept_length_drafted": a, "num_draft_tokens": info.settings.speculative_num_draft_tokens,
                            "tok_per_s_off": round(tokens / t_off, 1), "tok_per_s_on": round(tokens / t_on, 1),
                            "speedup": round(t_off / t_on, 3), "accept_length": round(emitted / steps, 3) if steps else None,
                            "outputs_differing": sum(out_on[k] != out_off[k] for k in out_on)})
            print(results[-1], file=sys.stderr)
    report = {**provenance(" ".join(sys.argv)), "model": info.model_path, "device": info.device, "dtype": info.dtype,
              "output_len": args.output_len, "workload": args.workload, "results": results}
    print(json.dumps(report, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            f.write(json.dumps(report, indent=2) + "\n")
    sched.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
