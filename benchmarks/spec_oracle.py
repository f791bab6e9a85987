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
load policy is off (every step verifies).

Near-ties. A verify forward computes a token's logits with other kernels (the tree-masked extend
kernel, other GEMM shapes) than a decode step does, so in bf16 the logits differ in the last bits.
On dummy weights the top two logits of a 128k vocabulary are often closer than that, so greedy
speculative output may leave the plain output at such a near-tie, and from there the reference's
tokens no longer fit (accepted length collapses to 1). The report therefore gives, per a:
`outputs_differing` (speculative vs plain; with its `margin_at_divergence_max`, the largest top-1 -
top-2 logprob margin of the plain run at the first differing token, against `margin_median` of
all its tokens), and `diverged_beyond_margin`: outputs that differ where the plain run's margin
exceeded `--tie-margin` (not a near-tie: a bug; 0 expected). Then it re-anchors: requests whose
output left their reference get their own speculative output as the reference and the run is
repeated (at most `--anchor-rounds` runs), so the drafts are right again up to the next near-tie;
tok/s, speedup and accept_length are those of the last run, `outputs_off_reference` counts the
outputs that still left their reference there.
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


def first_difference(a: list[int], b: list[int]) -> int | None:
    """Index of the first token where a and b differ (or where one ends), None when equal."""
    if a == b:
        return None
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def divergence(out_on: dict, out_off: dict, margins: dict, tie_margin: float) -> dict:
    """How speculative outputs differ from plain ones, with the plain run's margins where they do."""
    at = [(k, first_difference(out_on[k], out_off[k])) for k in out_on]
    gaps = [margins[k][i] for k, i in at if i is not None and i < len(margins[k])]
    return {"outputs_differing": sum(i is not None for _, i in at),
            "margin_at_divergence_max": round(max(gaps), 4) if gaps else None,
            "diverged_beyond_margin": sum(g > tie_margin for g in gaps)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-sizes", default="1")
    p.add_argument("--accept-lengths", default="1,2,3,5,8", help="tokens emitted per verify forward per request")
    p.add_argument("--workload", default="rewrite", choices=["rewrite", "quotes", "chat"])
    p.add_argument("--num-prompts", type=int, default=0, help="prompts per batch size (default: max(4, 2 x bs))")
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--anchor-rounds", type=int, default=3, help="most speculative runs per accepted length")
    p.add_argument("--tie-margin", type=float, default=0.05,
                   help="top-1 - top-2 logprob margin below which a differing greedy token is a near-tie")
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
        margins: dict[str, list[float]] = {}  # an untimed plain run that also returns the top-2 logprobs
        _, _, out_lp = run_closed_loop(sched, ids, bs, replace(plain, logprobs=True, top_logprobs_num=2), margins)
        all_margins = sorted(g for v in margins.values() for g in v)
        tokens = sum(map(len, out_off.values()))
        for a in [int(x) for x in args.accept_lengths.split(",")]:
            refs = dict(out_off)
            for rounds in range(1, args.anchor_rounds + 1):
                spec.decoder = OracleDecoder(spec.decoder.runtime, {k: list(ids[int(k[1:])]) + v for k, v in refs.items()}, a)
                sched.releaser.on_leave = spec.decoder.release
                st = spec.stats
                before = (st.verify_steps, st.emitted)
                t_on, _, out_on = run_closed_loop(sched, ids, bs, replace(plain, speculative=True))
                steps, emitted = st.verify_steps - before[0], st.emitted - before[1]
                if rounds == 1:
                    diverged = divergence(out_on, out_off, margins, args.tie_margin)
                off_ref = [k for k in out_on if out_on[k] != refs[k]]
                if not off_ref or a == 1:  # a = 1 drafts nothing right: re-anchoring changes nothing
                    break
                refs.update({k: out_on[k] for k in off_ref})
            results.append({"batch_size": bs, "accept_length_drafted": a, "num_draft_tokens": info.settings.speculative_num_draft_tokens,
                            "tok_per_s_off": round(tokens / t_off, 1), "tok_per_s_on": round(tokens / t_on, 1),
                            "speedup": round(t_off / t_on, 3), "accept_length": round(emitted / steps, 3) if steps else None,
                            **diverged, "margin_median": round(all_margins[len(all_margins) // 2], 4) if all_margins else None,
                            "plain_runs_differing": sum(out_lp[k] != out_off[k] for k in out_off),
                            "anchor_rounds": rounds, "outputs_off_reference": len(off_ref)})
            print(results[-1], file=sys.stderr)
    report = {**provenance(" ".join(sys.argv)), "model": info.model_path, "device": info.device, "dtype": info.dtype,
              "output_len": args.output_len, "workload": args.workload, "tie_margin": args.tie_margin,
              "results": results}
    print(json.dumps(report, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            f.write(json.dumps(report, indent=2) + "\n")
    sched.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
