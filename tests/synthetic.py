"""Synthetic token shards for tests and benchmarks — the two writers, and when to use which.

    from synthetic import write_random_shards, write_learnable_shards
    write_random_shards(root, {"eng_Latn": (600, 120)}, vocab_size=500, seed=1)   # {lang: (docs, median length)}
    write_learnable_shards(root)                                                   # LANGS below, VOCAB ids

`write_random_shards`: uniform ids, web-like lognormal lengths, any languages and vocabulary. For
what only looks at lengths and counts: the loader's sampling, packing and resume, the data-stream
benchmarks. An MLM learns nothing from it.

`write_learnable_shards`: fixed small languages, Zipf-like ids with repeated motifs, so an MLM learns
something within a few dozen steps. For the training tests (tests/train/tinyrun.py); the golden losses
(tests/assets/golden_losses_tiny.json) were recorded on exactly these bytes, so do not change it.

Importable as `synthetic` from any test (tests/ is on sys.path through tests/conftest.py); workers
and benchmarks insert tests/ themselves.
"""

from __future__ import annotations

import os

import numpy as np

from mmbert.data.shards import ShardIndex, ShardWriter, write_index

# write_learnable_shards: vocabulary and languages (documents in train) of different sizes, so tiers and τ matter
VOCAB = 512
LANGS = {"eng_Latn": 120, "fra_Latn": 60, "deu_Latn": 30, "yor_Latn": 8}


def write_random_shards(root: str | os.PathLike, languages: dict[str, tuple[int, float]], *,
                        vocab_size: int = 32768, seed: int = 0, heldout_docs: int = 0,
                        sigma: float = 1.0, first_id: int = 5, max_len: int = 100_000) -> ShardIndex:
    """{lang: (docs, median doc length)}; lengths are lognormal(log median, sigma) (web-like: many
    short documents, a long tail), ids uniform in [first_id, vocab_size) so they never collide with
    the special ids 0..4."""
    rng = np.random.default_rng(seed)
    dtype = "uint16" if vocab_size <= 65536 else "uint32"
    counts: dict[str, dict[str, dict[str, int]]] = {}
    for lang, (docs, median) in sorted(languages.items()):
        counts[lang] = {}
        for split, n in (("train", docs), ("heldout", heldout_docs)):
            if split == "heldout" and not n:
                continue
            lens = np.clip(rng.lognormal(np.log(median), sigma, size=n).astype(np.int64), 1, max_len)
            with ShardWriter(root, lang, split, dtype) as w:
                ids = rng.integers(first_id, vocab_size, size=int(lens.sum()))
                for a, b in zip(np.r_[0, np.cumsum(lens)[:-1]], np.cumsum(lens)):
                    w.add(ids[a:b])
            counts[lang][split] = w.counts
    write_index(root, counts, dtype, vocab_size, {"name": "synthetic", "seed": seed})
    return ShardIndex.load(root)


def write_learnable_shards(root: str | os.PathLike, seed: int = 0) -> None:
    """LANGS with 4 heldout documents each, over VOCAB. Each language draws tokens from its own
    Zipf-like distribution over a shifted vocabulary and repeats short motifs, so an MLM can learn
    something within a few dozen steps."""
    rng = np.random.default_rng(seed)
    counts = {}
    for li, (lang, ndocs) in enumerate(LANGS.items()):
        ranks = np.arange(1, VOCAB - 5 + 1)
        p = 1.0 / ranks ** 1.1
        p /= p.sum()
        perm = np.random.default_rng(li).permutation(VOCAB - 5) + 5
        motifs = [perm[rng.integers(0, 60, size=4)] for _ in range(8)]
        counts[lang] = {}
        for split, n in (("train", ndocs), ("heldout", 4)):
            with ShardWriter(root, lang, split, "uint16") as w:
                for _ in range(n):
                    length = int(rng.integers(10, 90))
                    doc = perm[rng.choice(VOCAB - 5, size=length, p=p) % (VOCAB - 5)]
                    for k in range(0, length - 4, 12):
                        doc[k:k + 4] = motifs[int(rng.integers(0, 8))]
                    w.add(doc.astype(np.int64))
            counts[lang][split] = w.counts
    write_index(root, counts, "uint16", VOCAB, {"name": "synthetic"})
