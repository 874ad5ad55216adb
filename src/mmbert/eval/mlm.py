"""Per-language held-out MLM loss and accuracy at a fixed 15% masking and a fixed seed.

Comparable across checkpoints and phases: the same held-out documents, the same chunks and the same
masked positions every time (the mask of a language depends only on `seed` and the language tag, not
on which other languages are evaluated, nor on the training phase's mask rate).

From the training loop (the model is restored to its previous train/eval mode):

    from mmbert.eval.mlm import evaluate_mlm
    res = evaluate_mlm(model, "out/shards", max_tokens_per_lang=8192)
    res["languages"]["deu_Latn"]["loss"], res["tiers"]["high"]["accuracy"], res["macro"]["loss"]

Standalone:

    python -m mmbert.eval.mlm --model out/ckpt --shards out/shards [--languages deu_Latn,fra_Latn]

Protocol: each held-out document is cut into chunks of `seq_len - 2` tokens, framed <cls> chunk <sep>
(our shards store documents without specials), batched with padding; documents are taken in order
until `max_tokens_per_lang` tokens. Loss = summed cross-entropy over masked positions / their count
(token-weighted within a language); tier and macro numbers average languages equally. Masked
positions include the 10% random / 10% kept ones (BERT's 80/10/10, `mmbert.data.masking`).
Tiers default to mmBERT's language progression on the shards' train token counts: high = top 60,
mid = top 110, low = the rest; pass `tiers=[("pretrain", "top:12"), ("mid", "top:24"), ("decay", "all")]`
to follow a recipe (first matching spec wins).
"""

from __future__ import annotations

import argparse
import math
import zlib
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from mmbert.data.packing import pad_rows
from mmbert.tokenizer import config_special_ids, resolve_special_ids
from mmbert.utils import IGNORE_INDEX, unwrap

DEFAULT_TIERS: tuple[tuple[str, str], ...] = (("high", "top:60"), ("mid", "top:110"), ("low", "all"))


def assign_tiers(token_counts: dict[str, int], tiers: Sequence[tuple[str, Any]] = DEFAULT_TIERS) -> dict[str, str]:
    """Language → tier name: the first (name, spec) whose language set contains it.

    A spec is a tier string ("top:K", "min:X", "all") resolved by mmbert.data.sampling, or a list.
    """
    from mmbert.data.sampling import select_languages

    nonzero = {k: v for k, v in token_counts.items() if v > 0}
    out: dict[str, str] = {}
    for name, spec in tiers:
        members = select_languages(nonzero, spec) if isinstance(spec, str) else list(spec)
        for lang in members:
            out.setdefault(lang, name)
    for lang in token_counts:
        out.setdefault(lang, tiers[-1][0] if tiers else "all")
    return out


def spread_subset(token_counts: dict[str, int], k: int) -> list[str]:
    """k languages spread over the size ranking: the largest, the smallest and evenly between."""
    ranked = sorted(token_counts, key=lambda x: (-token_counts[x], x))
    if k >= len(ranked):
        return sorted(ranked)
    idx = sorted({round(i * (len(ranked) - 1) / (k - 1)) for i in range(k)}) if k > 1 else [0]
    return sorted(ranked[i] for i in idx)


def _chunks(shard, seq_len: int, max_tokens: int) -> list[list[int]]:
    body = seq_len - 2
    rows, n = [], 0
    for i in range(len(shard)):
        doc = shard[i].tolist()
        for s in range(0, len(doc), body):
            piece = doc[s:s + body]
            if n + len(piece) > max_tokens:
                piece = piece[:max_tokens - n]
            if piece:
                rows.append(piece)
                n += len(piece)
            if n >= max_tokens:
                return rows
    return rows


@torch.no_grad()
def evaluate_mlm(model: nn.Module, shards, languages: Sequence[str] | None = None, *,
                 max_tokens_per_lang: int = 8192, seed: int = 0, mask_rate: float = 0.15,
                 seq_len: int = 256, batch_size: int = 16, split: str = "heldout",
                 tiers: Sequence[tuple[str, Any]] | None = None, mask_id: int | None = None,
                 cls_id: int | None = None, sep_id: int | None = None, pad_id: int | None = None,
                 progress: bool = False) -> dict:
    """Held-out MLM loss/accuracy per language, per tier and macro-averaged.

    model: an MLM model called as model(input_ids, attention_mask=..., labels=...) — ours (sparse
    logits [N_labelled, V] + loss_sum) or a transformers *ForMaskedLM (dense logits [B, T, V]).
    Special ids not given come from model.config, else the shards' tokenizer, else model.tokenizer
    (`mmbert.tokenizer.resolve_special_ids`); no mask token anywhere is an error.
    Returns {"languages": {lang: {"loss", "accuracy", "masked_tokens", "tokens", "tier"}},
             "tiers": {tier: {"loss", "accuracy", "languages"}}, "macro": {"loss", "accuracy"},
             "seed", "mask_rate", "max_tokens_per_lang", "seq_len", "split"}.
    """
    from mmbert.data.masking import mask_tokens
    from mmbert.data.shards import ShardIndex, open_shard

    index = ShardIndex.load(shards)
    langs = list(languages) if languages is not None else [l for l in index.languages if index.has(l, split)]
    missing = [l for l in langs if not index.has(l, split)]
    if missing:
        raise ValueError(f"evaluate_mlm: no '{split}' split in {shards} for {missing}; run "
                         f"`mmbert data prepare` with a held-out split or pick other languages")
    cfg = getattr(unwrap(model), "config", None)  # DDP / torch.compile wrappers see through
    vocab = int(getattr(cfg, "vocab_size", index.vocab_size))
    if index.vocab_size > vocab:
        raise ValueError(f"evaluate_mlm: shards use a {index.vocab_size}-token vocabulary but the model has "
                         f"{vocab}; evaluate with shards made by the model's tokenizer")
    # explicit ids, else the model config's, else the shards' tokenizer, else the model's own tokenizer;
    # no guessing (a ModernBERT config has no mask_token_id, and id 4 is an ordinary token there)
    special = resolve_special_ids(cfg, index.tokenizer if isinstance(index.tokenizer, dict) else None,
                                  getattr(model, "tokenizer", None), require=("mask", "pad", "cls", "sep"),
                                  mask=mask_id, pad=pad_id, cls=cls_id, sep=sep_id)
    mask_id, pad_id, cls_id, sep_id = special.mask, special.pad, special.cls, special.sep
    specials = config_special_ids(cfg) | special.all()
    counts = {l: index.tokens(l, "train") if index.has(l, "train") else 0 for l in index.languages}
    tier_of = assign_tiers(counts, tiers if tiers is not None else DEFAULT_TIERS)

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    per_lang: dict[str, dict] = {}
    try:
        for lang in tqdm(langs, desc="mlm eval", disable=not progress, leave=False):
            rows = _chunks(open_shard(shards, lang, split), seq_len, max_tokens_per_lang)
            # a per-language generator: the mask of a language never depends on the others evaluated
            gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(lang.encode()))
            loss_sum, n_masked, n_correct, n_tokens = 0.0, 0, 0, 0
            for s in range(0, len(rows), batch_size):
                batch = rows[s:s + batch_size]
                ids, att = pad_rows([[cls_id] + r + [sep_id] for r in batch], pad_id)
                n_tokens += sum(len(r) for r in batch)
                inp, labels = mask_tokens(ids, mask_rate, special_ids=specials, vocab_size=vocab,
                                          mask_id=mask_id, generator=gen)
                ls, nm, nc = _score(model, inp.to(device), att.to(device), labels.to(device))
                loss_sum, n_masked, n_correct = loss_sum + ls, n_masked + nm, n_correct + nc
            per_lang[lang] = {"loss": loss_sum / n_masked if n_masked else float("nan"),
                              "accuracy": n_correct / n_masked if n_masked else float("nan"),
                              "masked_tokens": n_masked, "tokens": n_tokens, "tier": tier_of.get(lang, "?")}
    finally:
        model.train(was_training)

    def avg(names: list[str]) -> dict[str, float]:
        vals = [per_lang[l] for l in names if per_lang[l]["masked_tokens"] > 0]
        if not vals:
            return {"loss": float("nan"), "accuracy": float("nan")}
        return {"loss": sum(v["loss"] for v in vals) / len(vals),
                "accuracy": sum(v["accuracy"] for v in vals) / len(vals)}

    tier_names = list(dict.fromkeys([t for t, _ in (tiers or DEFAULT_TIERS)]))
    tiers_out = {}
    for t in tier_names:
        members = [l for l in per_lang if per_lang[l]["tier"] == t]
        if members:
            tiers_out[t] = {**avg(members), "languages": len(members)}
    return {"languages": per_lang, "tiers": tiers_out, "macro": avg(list(per_lang)), "seed": seed,
            "mask_rate": mask_rate, "max_tokens_per_lang": max_tokens_per_lang, "seq_len": seq_len,
            "split": split}


def _score(model: nn.Module, inp: torch.Tensor, att: torch.Tensor, labels: torch.Tensor
           ) -> tuple[float, int, int]:
    """(summed CE over masked positions, number masked, number predicted correctly)."""
    sel = labels != IGNORE_INDEX
    n = int(sel.sum())
    if n == 0:
        return 0.0, 0, 0
    out = model(inp, attention_mask=att, labels=labels)
    logits = out.logits if hasattr(out, "logits") else out[0]
    # ours decodes only labelled positions ([N_labelled, V], row-major order); transformers gives [B, T, V]
    logits = logits if logits.dim() == 2 and logits.shape[0] == n else logits[sel]
    target = labels[sel]
    loss = F.cross_entropy(logits.float(), target, reduction="sum")
    return float(loss), n, int((logits.argmax(-1) == target).sum())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="model directory (ours or transformers *ForMaskedLM)")
    p.add_argument("--shards", required=True, help="token shards made with the model's tokenizer")
    p.add_argument("--languages", default=None, help="comma-separated tags (default: all with held-out data)")
    p.add_argument("--max-tokens-per-lang", type=int, default=8192)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the result JSON here")
    args = p.parse_args(argv)
    from mmbert.eval.backbone import load_mlm_model

    res = evaluate_mlm(load_mlm_model(args.model), args.shards,
                       args.languages.split(",") if args.languages else None,
                       max_tokens_per_lang=args.max_tokens_per_lang, seed=args.seed, progress=True)
    print(format_mlm_table(res))
    if args.out:
        from mmbert.eval.runner import write_json

        write_json(args.out, res)
    return 0


def format_mlm_table(res: dict) -> str:
    """Markdown: one row per language (grouped by tier), then tier and macro averages."""
    lines = ["| language | tier | loss | accuracy | masked tokens |", "|---|---|---:|---:|---:|"]
    for lang, r in sorted(res["languages"].items(), key=lambda kv: (kv[1]["tier"], kv[0])):
        lines.append(f"| {lang} | {r['tier']} | {r['loss']:.3f} | {r['accuracy']:.3f} | {r['masked_tokens']} |")
    for t, r in res["tiers"].items():
        lines.append(f"| **tier {t}** ({r['languages']} langs) | | {r['loss']:.3f} | {r['accuracy']:.3f} | |")
    m = res["macro"]
    if not math.isnan(m["loss"]):
        lines.append(f"| **macro** | | {m['loss']:.3f} | {m['accuracy']:.3f} | |")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
