"""How far an EAGLE head's training agreement carries to other prompts: the target answers a
`jackfield bench spec` workload greedily, and the head, fed the target's own features (teacher
forcing, as in training, no noise), predicts each answer token from the one before it. Prints
depth-1 top-1 and top-k agreement over the answer tokens (`train-eagle`'s held-out agreement is the
top-1 over every position of its own sampled sequences, prompts included); a live speculative run's
first draft depth can do no better.

    python3 benchmarks/studies/eagle_agreement.py --head DIR [--workload chat] [--num-prompts 6]
"""
from __future__ import annotations

import argparse
import json

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--head", required=True, help="an EAGLE-1/2 head directory (train-eagle's --out)")
    p.add_argument("--model", default=None, help="the target (default: the embedded SmolLM2)")
    p.add_argument("--workload", default="chat", choices=["rewrite", "quotes", "chat"])
    p.add_argument("--num-prompts", type=int, default=6)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--top-k", type=int, default=4)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = p.parse_args()

    from jackfield.bench.spec_workloads import prompts
    from jackfield.sampling.params import SamplingParams
    from jackfield.sdk import offline_target
    from jackfield_plugins.spec.eagle_load import load_head

    target = offline_target(args.model, device=args.device, max_running_requests=args.num_prompts,
                            mem_fraction_static=0.5)
    ids = prompts(target.tokenizer, args.workload, args.num_prompts)
    answers = target.generate(ids, [SamplingParams(max_new_tokens=args.output_len, temperature=0) for _ in ids])
    seqs = [p + a for p, a in zip(ids, answers)]
    head = load_head(args.head, target.model_config, target.model, target.device, torch.float32,
                     max(map(len, seqs)) + 1)
    top1 = topk = n = 0
    with torch.no_grad():
        for seq, f, prompt in zip(seqs, target.hidden_states(seqs), ids):
            t = len(seq) - 1
            h, _ = head.features(torch.tensor(seq[1:], device=target.device), torch.arange(t, device=target.device),
                                 f[:-1].float(), None)
            picks = head.logits(h).topk(args.top_k).indices.cpu()
            for j in range(len(prompt) - 1, t - 1):  # position j reads token j+1 and predicts token j+2
                top1 += int(picks[j, 0] == seq[j + 2])
                topk += int(seq[j + 2] in picks[j].tolist())
                n += 1
    target.close()
    print(json.dumps({"head": args.head, "workload": args.workload, "answer_tokens": n,
                      "top1": round(top1 / n, 4), f"top{args.top_k}": round(topk / n, 4)}))


if __name__ == "__main__":
    main()
