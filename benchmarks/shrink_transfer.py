"""Does a shrunk model start better than a random one? (mmbert.init_from, issue 6 acceptance)

Trains a "source" encoder on a synthetic language for a few hundred CPU steps, shrinks it with
`mmbert.init_from.transfer_state_dict` (rules "magnitude" and "strided"), then trains each shrunk
model and a randomly initialised model of the same size for the same steps on the same batches,
and prints their held-out MLM losses as a markdown table.

    .venv/bin/python benchmarks/shrink_transfer.py                 # minutes on 2 idle CPU cores
    .venv/bin/python benchmarks/shrink_transfer.py --source-steps 600 --target-steps 300 --seeds 3

The language is a hidden Markov model (32 states, each leading to 4 others, each emitting 12 of
256 words, Dirichlet(0.5) probabilities), so predicting a masked word needs the neighbours on
both sides; ln(261) = 5.56 nats is the uniform loss. Masking: 30% (mmBERT phase 1), 80/10/10.
"""

from __future__ import annotations

import argparse
import math
import platform
import time

import numpy as np
import torch

from mmbert import EncoderConfig
from mmbert.data.masking import mask_tokens
from mmbert.export.hf import load_hf_state_dict, to_hf_state_dict
from mmbert.init_from import transfer_state_dict
from mmbert.model import build_model

SPECIAL = 5  # pad 0, eos/sep 1, bos/cls 2, unk 3, mask 4


class HMMLanguage:
    def __init__(self, words: int = 256, states: int = 32, branching: int = 4, emit: int = 12,
                 seed: int = 1234):
        rng = np.random.default_rng(seed)
        self.trans = np.zeros((states, states))
        self.emis = np.zeros((states, words))
        for s in range(states):
            self.trans[s, rng.choice(states, branching, replace=False)] = rng.dirichlet([0.5] * branching)
            self.emis[s, rng.choice(words, emit, replace=False)] = rng.dirichlet([0.5] * emit)
        self.trans_cdf, self.emis_cdf = self.trans.cumsum(1), self.emis.cumsum(1)
        self.vocab_size = SPECIAL + words

    def sample(self, batch: int, seq: int, rng: np.random.Generator) -> torch.Tensor:
        """[batch, seq] ids: <cls> w_1 … w_{seq-2} <sep>."""
        n = seq - 2
        states = np.empty((batch, n), dtype=np.int64)
        states[:, 0] = rng.integers(0, self.trans.shape[0], batch)
        for t in range(1, n):
            u = rng.random(batch)[:, None]
            states[:, t] = np.minimum((u > self.trans_cdf[states[:, t - 1]]).sum(1), self.trans.shape[0] - 1)
        u = rng.random((batch, n))[..., None]
        words = np.minimum((u > self.emis_cdf[states]).sum(-1), self.emis.shape[1] - 1)
        ids = np.concatenate([np.full((batch, 1), 2), words + SPECIAL, np.full((batch, 1), 1)], 1)
        return torch.from_numpy(ids)


def masked(ids: torch.Tensor, vocab: int, g: torch.Generator):
    return mask_tokens(ids, 0.3, special_ids=range(SPECIAL), vocab_size=vocab, mask_id=4, generator=g)


@torch.no_grad()
def eval_loss(model, batches) -> float:
    model.eval()
    tot, n = 0.0, 0
    for x, y in batches:
        out = model(x, labels=y)
        tot += float(out.loss) * int(out.num_labelled)
        n += int(out.num_labelled)
    model.train()
    return tot / n


def train(model, lang: HMMLanguage, steps: int, seed: int, eval_batches, eval_at: set[int],
          batch: int, seq: int, lr: float = 1e-3) -> dict[int, float]:
    """AdamW, 10-step warmup then constant LR; the batch stream depends only on `seed`."""
    rng, g = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    curve = {0: eval_loss(model, eval_batches)} if 0 in eval_at else {}
    model.train()
    for step in range(1, steps + 1):
        for grp in opt.param_groups:
            grp["lr"] = lr * min(1.0, step / 10)
        x, y = masked(lang.sample(batch, seq, rng), lang.vocab_size, g)
        loss = model(x, labels=y).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step in eval_at:
            curve[step] = eval_loss(model, eval_batches)
    return curve


def run_experiment(source_steps: int, target_steps: int, seeds: int = 1, hidden: int = 64,
                   layers: int = 4, batch: int = 16, seq: int = 64, log=print):
    """Train the source, shrink it, train targets; returns (source config, source curve, rows)
    with rows = [(target name, params, init, {step: mean eval loss})]."""
    lang = HMMLanguage()
    erng, eg = np.random.default_rng(999), torch.Generator().manual_seed(999)
    eval_batches = [masked(lang.sample(32, seq, erng), lang.vocab_size, eg) for _ in range(4)]
    base = dict(vocab_size=lang.vocab_size, max_position_embeddings=max(128, seq), local_attention=32,
                global_attn_every_n_layers=3, global_rope_theta=160000.0, local_rope_theta=10000.0)
    H, L = hidden, layers
    src_cfg = EncoderConfig(hidden_size=H, intermediate_size=2 * H, num_hidden_layers=L,
                            num_attention_heads=4, **base)
    targets = {  # like mmBERT-small from base: hidden and heads halved, intermediate kept
        f"width/2 ({H // 2}h, 2 heads, {L} layers)": src_cfg.replace(hidden_size=H // 2, num_attention_heads=2),
        f"width/2 + depth/2 ({H // 2}h, 2 heads, {L // 2} layers)": src_cfg.replace(
            hidden_size=H // 2, num_attention_heads=2, num_hidden_layers=L // 2),
    }
    t0 = time.time()
    torch.manual_seed(0)
    source = build_model(src_cfg)
    src_curve = train(source, lang, source_steps, seed=100, eval_batches=eval_batches,
                      eval_at={0, source_steps}, batch=batch, seq=seq)
    src_state = to_hf_state_dict(source)
    log(f"source {src_cfg.num_parameters():,} params: eval loss {src_curve[0]:.3f} → "
        f"{src_curve[source_steps]:.3f} after {source_steps} steps ({time.time() - t0:.0f}s)")

    ts = target_steps
    eval_at = {0, ts // 8, ts // 4, ts // 2, ts}
    rows = []
    for name, cfg in targets.items():
        for init in ("random", "shrink: magnitude", "shrink: strided"):
            curves = []
            for seed in range(seeds):
                torch.manual_seed(seed)
                model = build_model(cfg)
                if init != "random":
                    sd, _ = transfer_state_dict(src_state, src_cfg, cfg, init.split(": ")[1])
                    assert load_hf_state_dict(model, sd) == []
                curves.append(train(model, lang, ts, seed=200 + seed, eval_batches=eval_batches,
                                    eval_at=eval_at, batch=batch, seq=seq))
            mean = {s: float(np.mean([c[s] for c in curves])) for s in sorted(eval_at)}
            rows.append((name, f"{cfg.num_parameters():,}", init, mean))
            log(f"  {name:44s} {init:18s} " + "  ".join(f"{s}:{v:.3f}" for s, v in mean.items()))
    return src_cfg, src_curve, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source-steps", type=int, default=300)
    ap.add_argument("--target-steps", type=int, default=150)
    ap.add_argument("--seeds", type=int, default=1, help="target training seeds (data order + random init)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=64, help="source hidden size (targets: half)")
    ap.add_argument("--layers", type=int, default=4, help="source depth")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    src_cfg, src_curve, rows = run_experiment(
        args.source_steps, args.target_steps, args.seeds, args.hidden, args.layers, args.batch,
        args.seq, log=lambda m: print(m, flush=True))
    steps = sorted(rows[0][3])
    print("\n## Shrink transfer vs random init (synthetic HMM language, MLM 30%)\n")
    print(f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; source {src_cfg.num_parameters():,} params trained "
          f"{args.source_steps} steps (eval loss {src_curve[args.source_steps]:.3f}); targets trained "
          f"{args.target_steps} steps, batch {args.batch}×{args.seq}, AdamW 1e-3; mean of "
          f"{args.seeds} seed(s); uniform = {math.log(HMMLanguage().vocab_size):.2f}. "
          f"Total {time.time() - t0:.0f}s.\n")
    print("| target | params | init | " + " | ".join(f"loss @ {s}" for s in steps) + " |")
    print("|---|---|---|" + "---|" * len(steps))
    for name, n, init, mean in rows:
        print(f"| {name} | {n} | {init} | " + " | ".join(f"{mean[s]:.3f}" for s in steps) + " |")


if __name__ == "__main__":
    main()
