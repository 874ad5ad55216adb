"""Tokenizer: train (Gemma/SentencePiece-style BPE with byte fallback), load any tokenizer.json, save
for `transformers.AutoTokenizer`, and a fertility report.

    mmbert tokenizer train --corpus out/corpus --vocab-size 32768 --out out/tokenizer
    from mmbert.tokenizer import load_tokenizer, train_tokenizer
    tok = load_tokenizer("out/tokenizer")          # a directory or a tokenizer.json (ours, Gemma 2, …)
    ids = tok.encode("Hallo Welt")                 # [<bos>, …, <eos>]
    tok.decode(ids) == "Hallo Welt"

Design (mmBERT uses Gemma 2's tokenizer; we train the same kind):
- BPE over characters with byte fallback: any character outside the vocabulary becomes its UTF-8
  bytes `<0xNN>` instead of `<unk>`, so every script round-trips exactly and nothing is unknown.
- No normalizer (no lowercasing, no NFKC: text comes back as it went in); spaces are kept as `▁`
  attached to the following word (Metaspace, no prefix space added), digits split one by one.
- Special tokens at mmBERT's ids: <pad> 0, <eos> 1, <bos> 2, <unk> 3, <mask> 4, then the 256 byte
  tokens, then the learned vocabulary; the size is padded with <unused*> tokens to a multiple of
  64 (tensor-core friendly embedding shapes).
- Encoder framing `<bos> text <eos>` (pairs: `<bos> a <eos> b <eos>`), the CLS/SEP roles of BERT.
- Training text is a temperature-sampled mix of the corpus languages (p_l ∝ n_l^τ, τ = 0.3 by
  default), so low-resource scripts get vocabulary instead of being swamped by the big languages.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from tokenizers import AddedToken, Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, processors, trainers
from mmbert.corpus.byo import open_corpus
from mmbert.temperature import temperature_probs
from mmbert.utils import SPECIAL_TOKENS, atomic_write  # SPECIAL_TOKENS: at ids 0..4, in order

log = logging.getLogger(__name__)

BYTE_TOKENS = tuple(f"<0x{b:02X}>" for b in range(256))
VOCAB_MULTIPLE = 64

# Spellings of each role in other tokenizers, tried in order when loading a foreign tokenizer.json.
ROLE_NAMES = {
    "pad": ("<pad>", "[PAD]", "<|padding|>", "<|pad|>"),
    "eos": ("<eos>", "</s>", "[SEP]", "<|endoftext|>", "<|end_of_text|>"),
    "bos": ("<bos>", "<s>", "[CLS]", "<|begin_of_text|>", "<|startoftext|>"),
    "unk": ("<unk>", "[UNK]", "<|unk|>"),
    "mask": ("<mask>", "[MASK]", "<|mask|>"),
}


class TokenizerError(ValueError):
    """A tokenizer file that cannot be used as given (missing, corrupt, lacking a required token)."""


@dataclass(frozen=True)
class SpecialIds:
    pad: int
    eos: int
    bos: int
    unk: int | None
    mask: int


# ----------------------------------------------------------------------------- special ids: one home
@dataclass(frozen=True)
class ResolvedIds:
    """Special token ids a caller uses (None: neither config nor tokenizer names one)."""

    pad: int | None
    cls: int | None
    sep: int | None
    unk: int | None
    mask: int | None

    def all(self) -> set[int]:
        return {i for i in (self.pad, self.cls, self.sep, self.unk, self.mask) if i is not None}


# role → (model config fields, tokenizer attributes / shard-index tokenizer-info keys), in order
_ROLE_SOURCES = {
    "pad": (("pad_token_id",), ("pad_id", "pad_token_id")),
    "cls": (("cls_token_id", "bos_token_id"), ("bos_id", "cls_token_id", "bos_token_id")),
    "sep": (("sep_token_id", "eos_token_id"), ("eos_id", "sep_token_id", "eos_token_id")),
    "unk": (("unk_token_id",), ("unk_id", "unk_token_id")),
    "mask": (("mask_token_id",), ("mask_id", "mask_token_id")),
}
_ROLE_FIX = {"mask": "mask_token_id", "pad": "pad_token_id", "cls": "cls_token_id", "sep": "sep_token_id",
             "unk": "unk_token_id"}


def _lookup(source: Any, keys: Sequence[str]) -> int | None:
    for k in keys:
        v = source.get(k) if isinstance(source, dict) else getattr(source, k, None)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return None


def resolve_special_ids(config: Any = None, *tokenizers: Any, require: Sequence[str] = (),
                        **given: int | None) -> ResolvedIds:
    """The special token ids (pad, cls, sep, unk, mask), resolved in one place for every caller
    (fill-mask, MLM eval, data preparation, the loader): an explicit `given` value wins, then the
    model config's `*_token_id` (when the file states it — official ModernBERT and mmBERT configs
    have no mask_token_id), then each tokenizer in turn: our Tokenizer, a transformers tokenizer,
    or a shard index's tokenizer info dict. cls falls back to bos and sep to eos. A role in
    `require` that nothing names stops with one TokenizerError saying how to fix it."""
    out = {}
    for role, (cfg_keys, tok_keys) in _ROLE_SOURCES.items():
        v = given.get(role)
        if v is None and config is not None:
            v = _lookup(config, cfg_keys)
        for tok in tokenizers:
            if v is not None:
                break
            if tok is not None:
                v = _lookup(tok, tok_keys)
        out[role] = v
    for role in require:
        if out[role] is None:
            token = {"mask": "<mask>/[MASK]", "pad": "<pad>/[PAD]", "cls": "<bos>/[CLS]", "sep": "<eos>/[SEP]",
                     "unk": "<unk>/[UNK]"}[role]
            raise TokenizerError(f"no {role} token: the model config has no {_ROLE_FIX[role]} and no tokenizer "
                                 f"defines one; add \"{_ROLE_FIX[role]}\" to config.json or a {token} special "
                                 f"token to the tokenizer")
    return ResolvedIds(**out)


def config_special_ids(config: Any) -> set[int]:
    """Every special id a model config names (its pad, bos/cls, eos/sep, unk and mask fields); none
    for no config."""
    if config is None:
        return set()
    keys = dict.fromkeys(k for cfg_keys, _ in _ROLE_SOURCES.values() for k in cfg_keys)
    return {v for k in keys if (v := _lookup(config, (k,))) is not None}


class Tokenizer:
    """A `tokenizers.Tokenizer` with mmBERT's special-token roles and encoder framing.

    `.hf` is the underlying `tokenizers.Tokenizer`; its post-processor frames `<bos> … <eos>`.
    """

    def __init__(self, hf: HFTokenizer, special: SpecialIds, special_tokens: dict[str, str] | None = None):
        self.hf = hf
        self.ids = special
        self.pad_id, self.eos_id, self.bos_id, self.unk_id, self.mask_id = (
            special.pad, special.eos, special.bos, special.unk, special.mask)
        self.tokens = special_tokens or {r: hf.id_to_token(getattr(special, r))
                                         for r in ("pad", "eos", "bos", "unk", "mask")
                                         if getattr(special, r) is not None}
        bos, eos = self.tokens["bos"], self.tokens["eos"]
        hf.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} $B:1 {eos}:1",
            special_tokens=[(bos, special.bos), (eos, special.eos)])
        # Added special tokens (incl. <unused*>): everything encode() should never produce from text.
        self.special_ids = frozenset(i for i, t in hf.get_added_tokens_decoder().items() if t.special) | {
            i for i in (special.pad, special.eos, special.bos, special.unk, special.mask) if i is not None}

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.hf.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(list(texts), add_special_tokens=add_special_tokens)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def info(self) -> dict:
        """Free-form description stored in shard indexes."""
        return {"vocab_size": self.vocab_size, "pad_id": self.pad_id, "eos_id": self.eos_id,
                "bos_id": self.bos_id, "unk_id": self.unk_id, "mask_id": self.mask_id,
                "model": type(self.hf.model).__name__}

    def save(self, out_dir: str | os.PathLike, model_max_length: int = 8192) -> Path:
        """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json (atomically) so that
        `transformers.AutoTokenizer.from_pretrained(out_dir)` gives a PreTrainedTokenizerFast.
        `model_max_length` is what `truncation=True` cuts to: a model directory passes its
        max_position_embeddings (export/hf.py); a bare tokenizer says mmBERT's 8192."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        t = self.tokens
        smap = {"bos_token": t["bos"], "eos_token": t["eos"], "pad_token": t["pad"], "mask_token": t["mask"],
                "cls_token": t["bos"], "sep_token": t["eos"]}
        if "unk" in t:
            smap["unk_token"] = t["unk"]
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": int(model_max_length),
                  "clean_up_tokenization_spaces": False, "add_bos_token": True, "add_eos_token": True,
                  "model_input_names": ["input_ids", "attention_mask"], **smap}
        atomic_write(out / "tokenizer.json", self.hf.to_str(pretty=False))
        atomic_write(out / "tokenizer_config.json", json.dumps(config, indent=1, ensure_ascii=False) + "\n")
        atomic_write(out / "special_tokens_map.json", json.dumps(smap, indent=1, ensure_ascii=False) + "\n")
        return out

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return (f"Tokenizer(vocab_size={self.vocab_size}, pad={self.pad_id}, eos={self.eos_id}, "
                f"bos={self.bos_id}, unk={self.unk_id}, mask={self.mask_id})")


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load a tokenizer directory or tokenizer.json (ours, Gemma 2's, a BERT/ModernBERT one, …).

    Special-token roles come from tokenizer_config.json / special_tokens_map.json when present,
    else from the usual spellings (<pad>/[PAD], <eos>/</s>/[SEP], <bos>/<s>/[CLS], <unk>/[UNK],
    <mask>/[MASK]). pad, bos, eos and mask are required (an encoder is trained with masking).
    """
    p = Path(path)
    file = p / "tokenizer.json" if p.is_dir() else p
    if not file.is_file():
        raise FileNotFoundError(f"no tokenizer at {path} (expected a tokenizer.json or a directory holding one); "
                                f"train one with `mmbert tokenizer train` or point at an existing one")
    try:
        hf = HFTokenizer.from_file(str(file))
    except Exception as e:  # tokenizers raises a bare Exception on parse errors
        raise TokenizerError(f"{file} is not a valid tokenizer.json ({e})") from None
    named: dict[str, str] = {}
    for meta in ("special_tokens_map.json", "tokenizer_config.json"):
        mf = file.parent / meta
        if mf.is_file():
            try:
                cfg = json.loads(mf.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                continue
            for role, keys in (("pad", ("pad_token",)), ("eos", ("eos_token", "sep_token")),
                               ("bos", ("bos_token", "cls_token")), ("unk", ("unk_token",)),
                               ("mask", ("mask_token",))):
                for k in keys:
                    v = cfg.get(k)
                    v = v.get("content") if isinstance(v, dict) else v
                    if isinstance(v, str) and hf.token_to_id(v) is not None and role not in named:
                        named[role] = v
    for role, names in ROLE_NAMES.items():
        if role not in named:
            for n in names:
                if hf.token_to_id(n) is not None:
                    named[role] = n
                    break
    missing = [r for r in ("pad", "eos", "bos", "mask") if r not in named]
    if missing:
        raise TokenizerError(f"{file} has no token for {', '.join(missing)} (looked for "
                             f"{'; '.join('/'.join(ROLE_NAMES[r]) for r in missing)}); add them as special "
                             f"tokens or train a tokenizer with `mmbert tokenizer train`")
    ids = SpecialIds(**{r: (hf.token_to_id(named[r]) if r in named else None)
                        for r in ("pad", "eos", "bos", "unk", "mask")})
    return Tokenizer(hf, ids, named)


# ----------------------------------------------------------------------------- training


def sampling_budgets(sizes: dict[str, int], total: int, temperature: float) -> dict[str, int]:
    """Characters to take per language: p_l ∝ n_l^τ, capped at what the language has, with the
    surplus of capped languages handed to the others (water-filling). Sums to min(total, Σ n_l)."""
    budgets = {l: 0 for l in sizes}
    active = [l for l, n in sizes.items() if n > 0]
    left = total
    while active and left > 0:
        p = temperature_probs({l: sizes[l] for l in active}, temperature, allow_zero=True)
        capped = {l for l in active if budgets[l] + left * p[l] >= sizes[l]}
        if not capped:
            for l in active:
                budgets[l] += int(left * p[l])
            break
        for l in active:
            if l in capped:
                left -= sizes[l] - budgets[l]
                budgets[l] = sizes[l]
        active = [l for l in active if l not in capped]
    return budgets


def training_texts(corpus_dir: str | os.PathLike, max_chars: int, temperature: float = 0.3, seed: int = 0,
                   languages: Sequence[str] | None = None, skipped: dict | None = None
                   ) -> tuple[list[str], dict[str, int]]:
    """The temperature-sampled training mix: documents kept with probability budget_l / n_l
    (seeded, in corpus order). Sizes and budgets are UTF-8 bytes — the unit corpus sizes are known
    in without reading them; counting characters against byte sizes would under-sample the
    multi-byte scripts (CJK, Indic) by 2–3x. Returns (texts, bytes taken per language); `skipped`,
    when given, receives what the corpus reader skipped ({reason: count}, and "examples")."""
    corpus = open_corpus(corpus_dir)
    langs = list(languages) if languages else corpus.languages
    sizes = {l: corpus.size_bytes(l) for l in langs}
    budgets = sampling_budgets(sizes, max_chars, temperature)
    rng = random.Random(seed)
    texts: list[str] = []
    taken: dict[str, int] = {}
    for l in langs:
        keep = min(1.0, budgets[l] / max(1, sizes[l]) * 1.05)
        n = 0
        for doc in corpus.documents(l):
            if n >= budgets[l]:
                break
            if keep >= 1.0 or rng.random() < keep:
                texts.append(doc)
                n += len(doc.encode("utf-8"))
        taken[l] = n
    if skipped is not None:
        skipped.update(dict(corpus.skipped.counts), examples={k: list(v) for k, v in corpus.skipped.examples.items()})
    return texts, taken


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True),
        pre_tokenizers.Digits(individual_digits=True),
    ])


def _decoder() -> decoders.Decoder:
    return decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])


def train_tokenizer_from_texts(texts: Iterable[str], vocab_size: int, *, min_frequency: int = 2,
                               max_token_length: int = 16, limit_alphabet: int = 8000,
                               progress: bool = False) -> Tokenizer:
    """Train on an iterable of texts (see the module docstring for the design)."""
    if vocab_size % VOCAB_MULTIPLE or vocab_size < 512:
        raise ValueError(f"vocab_size {vocab_size} must be a multiple of {VOCAB_MULTIPLE} and at least 512 "
                         f"(mmBERT uses 256000; 32768 or 65536 suit smaller runs)")
    n_fixed = len(SPECIAL_TOKENS) + len(BYTE_TOKENS)
    work = HFTokenizer(models.BPE(unk_token=None))
    work.pre_tokenizer = _pre_tokenizer()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - n_fixed, min_frequency=min_frequency,
                                  limit_alphabet=limit_alphabet, max_token_length=max_token_length,
                                  show_progress=progress, special_tokens=[],
                                  # printable ASCII always gets its own tokens, seen or not
                                  initial_alphabet=[chr(c) for c in range(0x21, 0x7F)])
    work.train_from_iterator(texts, trainer=trainer)
    learned = json.loads(work.to_str())["model"]
    # Final vocabulary: specials, bytes, then the learned tokens in their order (merges keep theirs).
    vocab: dict[str, int] = {t: i for i, t in enumerate(SPECIAL_TOKENS + BYTE_TOKENS)}
    for tok, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]):
        if tok not in vocab:
            vocab[tok] = len(vocab)
    # Pad to exactly the requested size (a small corpus may not yield enough merges); if the
    # alphabet alone overshoots, round up to the next multiple of 64 instead.
    target = vocab_size if len(vocab) <= vocab_size else len(vocab) + (-len(vocab)) % VOCAB_MULTIPLE
    unused = [f"<unused{i}>" for i in range(target - len(vocab))]
    for t in unused:
        vocab[t] = len(vocab)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in learned["merges"]]
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True,
                                fuse_unk=True))
    hf.pre_tokenizer = _pre_tokenizer()
    hf.decoder = _decoder()
    # <mask> absorbs the space before it (lstrip), as in the released mmBERT / ModernBERT tokenizers:
    # "is <mask>." → ▁is <mask> . rather than ▁is ▁ <mask> ., a lone ▁ pretraining never produces
    hf.add_special_tokens([AddedToken(t, special=True, lstrip=(t == "<mask>"), normalized=False)
                           for t in list(SPECIAL_TOKENS) + unused])
    return Tokenizer(hf, SpecialIds(pad=0, eos=1, bos=2, unk=3, mask=4))


VOCAB_SIZE = 32768  # default vocabulary size of `mmbert tokenizer train` and `mmbert demo`


def train_tokenizer(corpus_dir: str | os.PathLike, vocab_size: int = VOCAB_SIZE,
                    out_dir: str | os.PathLike | None = None, *,
                    temperature: float = 0.3, max_chars: int = 30_000_000, seed: int = 0,
                    languages: Sequence[str] | None = None, fertility_chars: int = 20_000,
                    progress: bool = True) -> Tokenizer:
    """Train on a temperature-sampled mix of `corpus_dir`; save to `out_dir` with fertility.json/.md.

    `max_chars` bounds the training text, counted in UTF-8 bytes (= characters for ASCII; 30 M
    train a 32k vocabulary in about a minute of CPU); each language's share is
    ∝ (its size)^temperature, capped at its size.
    """
    skipped: dict = {}
    texts, taken = training_texts(corpus_dir, max_chars, temperature, seed, languages, skipped=skipped)
    examples = skipped.pop("examples", {})
    if skipped:  # reported as `data prepare` does: counts by reason, with example paths
        print("tokenizer: skipped " + "; ".join(f"{r} ×{n} (e.g. {', '.join(examples.get(r, []))})"
                                               for r, n in sorted(skipped.items())), file=sys.stderr)
    if not texts:
        raise ValueError(f"corpus {corpus_dir} gave no training text (skipped: {skipped or 'nothing'})")
    if progress:
        log.info(f"tokenizer: training a {vocab_size} vocabulary on {sum(taken.values()) / 1e6:.1f} MB of text "
                 f"from {sum(1 for v in taken.values() if v)} languages (τ = {temperature})")
    tok = train_tokenizer_from_texts(texts, vocab_size, progress=progress)
    if out_dir is not None:
        out = tok.save(out_dir)
        report = fertility_report(tok, corpus_dir, languages=languages, max_chars=fertility_chars)
        atomic_write(out / "fertility.json", json.dumps(report, indent=1, ensure_ascii=False) + "\n")
        atomic_write(out / "fertility.md", fertility_table(report))
        atomic_write(out / "training_mix.json", json.dumps({"temperature": temperature, "max_chars": max_chars,
                                                               "seed": seed, "bytes": taken, "skipped": skipped},
                                                              indent=1) + "\n")
        if progress:
            log.info(fertility_table(report, top=25))
    return tok


# ----------------------------------------------------------------------------- fertility


def fertility(tok: Tokenizer, texts: Iterable[str]) -> dict[str, float]:
    """Tokens per character and per whitespace-separated word (no special tokens), and the share of
    tokens that are byte fallbacks or <unk>."""
    chars = words = tokens = fallback = unk = 0
    byte_ids = {i for i in (tok.hf.token_to_id(b) for b in BYTE_TOKENS) if i is not None}
    for t in texts:
        ids = tok.encode(t, add_special_tokens=False)
        chars += len(t)
        words += len(t.split())
        tokens += len(ids)
        fallback += sum(1 for i in ids if i in byte_ids)
        unk += sum(1 for i in ids if i == tok.unk_id)
    return {"chars": chars, "words": words, "tokens": tokens,
            "tokens_per_char": tokens / max(1, chars), "tokens_per_word": tokens / max(1, words),
            "byte_fallback_share": fallback / max(1, tokens), "unk": unk}


def fertility_report(tok: Tokenizer, corpus_dir: str | os.PathLike, *, languages: Sequence[str] | None = None,
                     max_chars: int = 20_000) -> dict[str, dict[str, float]]:
    """Fertility per language on the first `max_chars` characters of each language's documents."""
    corpus = open_corpus(corpus_dir)
    out = {}
    for l in (languages or corpus.languages):
        sample, n = [], 0
        for doc in corpus.documents(l):
            sample.append(doc[: max_chars - n])
            n += len(sample[-1])
            if n >= max_chars:
                break
        out[l] = fertility(tok, sample)
    return out


def fertility_table(report: dict[str, dict[str, float]], top: int | None = None) -> str:
    """Markdown table, languages sorted by tokens per character (worst last); `top` rows per end."""
    rows = sorted(report.items(), key=lambda kv: kv[1]["tokens_per_char"])
    if top and len(rows) > 2 * top:
        rows = rows[:top] + [("…", None)] + rows[-top:]
    tot = {k: sum(v[k] for v in report.values()) for k in ("chars", "words", "tokens")}
    lines = ["| language | chars | tokens/char | tokens/word | byte-fallback % |", "|---|---:|---:|---:|---:|"]
    for l, v in rows:
        if v is None:
            lines.append("| … | | | | |")
            continue
        lines.append(f"| {l} | {v['chars']} | {v['tokens_per_char']:.3f} | {v['tokens_per_word']:.2f} | "
                     f"{100 * v['byte_fallback_share']:.2f} |")
    med = sorted(v["tokens_per_char"] for v in report.values())[len(report) // 2] if report else math.nan
    lines.append(f"| all ({len(report)} languages) | {tot['chars']} | {tot['tokens'] / max(1, tot['chars']):.3f} | "
                 f"{tot['tokens'] / max(1, tot['words']):.2f} | median tokens/char {med:.3f} |")
    return "\n".join(lines) + "\n"
