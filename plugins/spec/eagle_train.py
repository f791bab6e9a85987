"""`jackfield spec train-eagle --model M --out DIR`: train an EAGLE-1/2 head by self-distillation.

1. Data (kept in DIR/data.pt, so a resumed run does not regenerate it): the target answers built-in
   prompts (topics x instructions, through its chat template when it has one) with sampling; then
   one extend forward per batch of whole sequences gives every position's final hidden state f.
2. Training: for a sequence x_0..x_T with features f_0..f_T, the head reads pairs (x_{j+1}, f_j),
   j < T, causally, and its output h_j should be f_{j+1}: the loss is smooth-L1(h_j, f_{j+1}) plus
   0.1 x the cross-entropy of the target's LM head on h_j against the target's own distribution
   softmax(lm_head(f_{j+1})) (EAGLE's loss); inputs carry a little uniform noise, as EAGLE trains,
   since at depth 2 and deeper the head reads its own outputs. AdamW, gradient clipping.
3. Every `--save-every` steps DIR/checkpoint.pt holds the head, the optimizer and the step; a new run
   with the same DIR resumes from it. At the end DIR holds config.json + model.safetensors in the
   LlamaForCausalLMEagle layout, for `--speculative-algorithm eagle --speculative-draft-model-path DIR`.
"""
from __future__ import annotations

import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

TARGET_MEMORY = 0.5  # GPU: the target's weights + KV cache; the rest is left to training
TOPICS = ["the ocean", "volcanoes", "the Roman empire", "photosynthesis", "black holes", "jazz music",
          "machine learning", "the French revolution", "honey bees", "climate change", "chess", "the human heart",
          "electric cars", "ancient Egypt", "the internet", "coffee", "mountains", "the moon landing",
          "prime numbers", "rainforests", "a lighthouse keeper", "a robot learning to paint", "a lost cat",
          "saving money", "learning a new language", "running a marathon", "baking bread", "public speaking",
          "the water cycle", "earthquakes", "vaccines", "solar panels", "the stock market", "friendship",
          "a job interview", "recycling", "the Great Wall of China", "dinosaurs", "gardening", "video games",
          "the Olympic games", "time management", "renting an apartment", "the immune system", "bicycles",
          "sorting algorithms", "databases", "a dragon who is afraid of fire", "a small town library"]
INSTRUCTIONS = ["Write a short story about {}.", "Explain {} to a ten-year-old.", "List five facts about {}.",
                "Write a Python function related to {}, with a docstring and comments.",
                "Summarize what people should know about {}.", "Write a poem about {}.",
                "Describe {} in detail, step by step.", "Write an essay introduction about {}.",
                "What are the pros and cons of {}?", "Give me some practical tips about {}.",
                "What is a common misconception about {}?", "Write a dialogue between two friends about {}.",
                "Compare {} with something similar and explain the differences.",
                "Answer briefly: why does {} matter?", "Write an email to a colleague about {}.",
                "Create a short quiz with answers about {}.", "Tell me the history of {} in a few paragraphs.",
                "How would you teach a beginner about {}?"]


def add_parser(sub) -> None:
    p = sub.add_parser("spec", help="Speculative decoding tools")
    ssub = p.add_subparsers(dest="spec_command", metavar="TOOL")
    t = ssub.add_parser("train-eagle", help="Train an EAGLE head on text the target generates (self-distillation)")
    t.add_argument("--model", default=None, help="the target model (default: the embedded SmolLM2)")
    t.add_argument("--out", required=True, help="output directory (resumed when it holds a checkpoint)")
    t.add_argument("--samples", type=int, default=512, help="generated sequences")
    t.add_argument("--max-new-tokens", type=int, default=256)
    t.add_argument("--temperature", type=float, default=0.7)
    t.add_argument("--gen-batch", type=int, default=64, help="sequences generated at once")
    t.add_argument("--steps", type=int, default=2000)
    t.add_argument("--batch-seqs", type=int, default=16, help="sequences per training step")
    t.add_argument("--lr", type=float, default=5e-4)
    t.add_argument("--noise", type=float, default=0.2, help="uniform input noise, in units of the features' std")
    t.add_argument("--ce-positions", type=int, default=0,
                   help="positions per step that the cross-entropy term reads (0: all); the LM head over the "
                        "vocabulary dominates a step, so a CPU run samples a few hundred")
    t.add_argument("--holdout", type=float, default=0.05,
                   help="fraction of the sequences kept out of training; the head's top-1 agreement with the "
                        "target on them is printed at every save (a gap to the training agreement is overfitting)")
    t.add_argument("--save-every", type=int, default=200)
    t.add_argument("--time-limit", type=float, default=0.0,
                   help="minutes of training (data generation not counted) after which the run saves and writes "
                        "the head as if --steps were reached (0: no limit)")
    t.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=run)


def prompts(tokenizer, n: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    texts = [rng.choice(INSTRUCTIONS).format(rng.choice(TOPICS)) for _ in range(n)]
    if tokenizer is None:
        return [[2 + (sum(map(ord, t)) * (i + 1)) % 100 for i in range(8)] for t in texts]
    out = []
    for text in texts:
        try:
            out.append(tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                                     add_generation_prompt=True),
                                        add_special_tokens=False))
        except Exception:  # no chat template
            out.append(tokenizer.encode(text))
    return out


def make_data(args, out: Path):
    from tqdm import tqdm

    from jackfield.sampling.params import SamplingParams
    from jackfield.sdk import offline_target

    target = offline_target(args.model, device=args.device, max_running_requests=args.gen_batch,
                            mem_fraction_static=TARGET_MEMORY)
    ids = prompts(target.tokenizer, args.samples, args.seed)
    params = [SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed + i)
              for i in range(len(ids))]
    t0 = time.perf_counter()
    with tqdm(total=len(ids), desc="generating", unit="seq") as bar:
        gen = target.generate(ids, params, on_finish=lambda: bar.update(1))
    seqs = [p + g for p, g in zip(ids, gen)]
    feats = [f.to("cpu", torch.bfloat16) for f in target.hidden_states(seqs)]
    print(f"generated {sum(map(len, gen))} tokens in {len(seqs)} sequences ({time.perf_counter() - t0:.1f} s)")
    data = {"seqs": seqs, "feats": feats}
    torch.save(data, out / "data.pt")
    return target, data


def head_config(target_config) -> dict:
    c = target_config
    rope = c.rope
    hf = {"architectures": ["LlamaForCausalLMEagle"], "model_type": "llama", "hidden_size": c.hidden_size,
          "intermediate_size": c.intermediate_size, "num_hidden_layers": 1, "num_attention_heads": c.num_heads,
          "num_key_value_heads": c.num_kv_heads, "head_dim": c.head_dim, "vocab_size": c.vocab_size,
          "rms_norm_eps": c.rms_norm_eps, "max_position_embeddings": c.max_position_embeddings,
          "rope_theta": rope.theta, "hidden_act": "silu", "tie_word_embeddings": False}
    if rope.scaling_type:
        hf["rope_scaling"] = {"rope_type": rope.scaling_type, "factor": rope.factor,
                              "low_freq_factor": rope.low_freq_factor, "high_freq_factor": rope.high_freq_factor,
                              "original_max_position_embeddings": rope.original_max_position_embeddings}
    return hf


def random_head(model_dir: str, out: str, seed: int = 0) -> str:
    """An untrained EAGLE-1/2 head for the target at `model_dir` (its config.json), written to `out`."""
    import json

    from jackfield.sdk import ModelConfig
    from jackfield_plugins.spec.eagle_head import EagleHead
    from jackfield_plugins.spec.eagle_load import save_head

    target = ModelConfig.from_hf(json.loads((Path(model_dir) / "config.json").read_text()))
    hf = head_config(target)
    torch.manual_seed(seed)
    save_head(EagleHead(ModelConfig.from_hf(hf), hf, target.hidden_size, 16), out)
    return out


def run(args) -> int:
    from tqdm import tqdm

    from jackfield.sdk import ModelConfig
    from jackfield_plugins.spec.eagle_head import EagleHead
    from jackfield_plugins.spec.eagle_load import save_head

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    if (out / "data.pt").exists():
        from jackfield.sdk import offline_target

        target = offline_target(args.model, device=args.device, max_running_requests=4,
                                mem_fraction_static=TARGET_MEMORY)
        data = torch.load(out / "data.pt", weights_only=False)
        print(f"reusing {len(data['seqs'])} sequences from {out / 'data.pt'}")
    else:
        target, data = make_data(args, out)
    dev, tc = target.device, target.model_config
    hf = head_config(tc)
    head = EagleHead(ModelConfig.from_hf(hf), hf, tc.hidden_size, tc.max_position_embeddings + 1).to(dev)
    head.share(target.model.model.embed_tokens, target.model.lm_head)
    lm = target.model.lm_head
    if getattr(lm, "method", None) is not None and getattr(lm, "tied_to", None) is None:
        raise ValueError("train-eagle needs the target's LM head in float, and this target's is quantized "
                         "(quantize_lm_head, or a checkpoint that stores it so): train on the unquantized target")
    lm_weight = (lm.tied_to.weight if getattr(lm, "tied_to", None) is not None else lm.weight).detach().float()
    opt = torch.optim.AdamW(head.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    step = 0
    ckpt = out / "checkpoint.pt"
    if ckpt.exists():
        state = torch.load(ckpt, map_location=dev, weights_only=False)
        head.load_state_dict(state["head"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
        print(f"resuming from step {step} ({ckpt})")
    seqs, feats = data["seqs"], data["feats"]
    held = min(len(seqs) - 1, max(1, round(args.holdout * len(seqs)))) if args.holdout > 0 else 0
    cut = len(seqs) - held
    seqs, held_seqs, feats, held_feats = seqs[:cut], seqs[cut:], feats[:cut], feats[cut:]
    std = float(torch.cat([f[:64].float() for f in feats[:64]]).std())
    rng = random.Random(args.seed + step)
    bar = tqdm(total=args.steps, initial=step, desc="train-eagle", unit="step")
    deadline = time.monotonic() + args.time_limit * 60 if args.time_limit > 0 else float("inf")
    while step < args.steps:
        batch = rng.sample(range(len(seqs)), min(args.batch_seqs, len(seqs)))
        loss, acc, tokens = _step(head, lm_weight, [seqs[i] for i in batch], [feats[i] for i in batch], dev,
                                  args.noise * std, args.ce_positions)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 0.5)
        opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{acc:.3f}")
        out_of_time = time.monotonic() >= deadline
        if step % args.save_every == 0 or step == args.steps or out_of_time:
            torch.save({"step": step, "head": head.state_dict(), "opt": opt.state_dict()}, ckpt)
            if held_seqs:
                acc = holdout_agreement(head, lm_weight, held_seqs, held_feats, dev, args.batch_seqs)
                bar.write(f"step {step}: held-out top-1 agreement {acc:.3f} ({len(held_seqs)} sequences)")
        if out_of_time:
            bar.write(f"--time-limit of {args.time_limit:g} min reached at step {step} of {args.steps}")
            break
    bar.close()
    save_head(head, str(out))
    print(f"EAGLE head written to {out} (config.json, model.safetensors)")
    target.close()
    return 0


@torch.no_grad()
def holdout_agreement(head, lm_weight: torch.Tensor, seqs, feats, dev, batch_seqs: int) -> float:
    """The head's top-1 agreement with the target's next-token pick over every position of `seqs`
    (no input noise), as the training progress bar's `acc` is measured on training batches."""
    hits = total = 0
    for i in range(0, len(seqs), batch_seqs):
        _, acc, tokens = _step(head, lm_weight, seqs[i:i + batch_seqs], feats[i:i + batch_seqs], dev, 0.0)
        hits, total = hits + acc * tokens, total + tokens
    return hits / total


def _step(head, lm_weight: torch.Tensor, seqs, feats, dev, noise: float, ce_positions: int = 0):
    """One batch, right-padded to [B, T]: the mean loss over every real pair of every sequence (the
    cross-entropy term over `ce_positions` of them drawn at random, when not 0), and the head's
    top-1 agreement with the target's next token on those."""
    dtype = head.fc.weight.dtype
    t = max(len(s) for s in seqs) - 1
    ids = torch.zeros(len(seqs), t, dtype=torch.int64)
    inp = torch.zeros(len(seqs), t, feats[0].shape[-1], dtype=dtype)
    want = torch.zeros_like(inp)
    real = torch.zeros(len(seqs), t, dtype=torch.bool)
    for i, (seq, f) in enumerate(zip(seqs, feats)):
        n = len(seq) - 1
        ids[i, :n] = torch.tensor(seq[1:])
        inp[i, :n], want[i, :n], real[i, :n] = f[:-1].to(dtype), f[1:].to(dtype), True
    ids, inp, want, real = ids.to(dev), inp.to(dev), want.to(dev), real.to(dev)
    if noise:
        inp = inp + (torch.rand_like(inp) - 0.5) * noise
    h, _ = head.features(ids, torch.arange(t, device=dev).expand(len(seqs), t), inp, None)
    h, want = h[real].float(), want[real].float()
    vloss = F.smooth_l1_loss(h, want)
    if 0 < ce_positions < len(h):
        pick = torch.randperm(len(h), device=dev)[:ce_positions]
        h, want = h[pick], want[pick]
    with torch.no_grad():
        target_logp = torch.log_softmax(F.linear(want, lm_weight), dim=-1)
    logp = torch.log_softmax(F.linear(h, lm_weight), dim=-1)
    ploss = -(target_logp.exp() * logp).sum(-1).mean()
    acc = float((logp.argmax(-1) == target_logp.argmax(-1)).float().mean())
    return vloss + 0.1 * ploss, acc, int(real.sum())
