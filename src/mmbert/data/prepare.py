"""`mmbert data prepare`: tokenize a corpus into per-language token shards with a held-out split.

    mmbert data prepare --corpus out/corpus --tokenizer out/tokenizer --out out/shards
    from mmbert.data.prepare import prepare_shards
    index = prepare_shards("out/corpus", "out/tokenizer", "out/shards", workers=2)

Each language folder of the corpus (see `mmbert.corpus.byo` for the layout and what is skipped)
becomes `<out>/<lang>/{train,heldout}.{tokens,offsets}` through `mmbert.data.shards.ShardWriter`
(atomic: a crash never leaves a half-written shard), and `<out>/index.json` lists the token and
document counts per language and split. Documents are stored without <bos>/<eos>.

Held-out documents are fixed by position: of a language's D documents (in corpus order),
h = clamp(ceil(D · heldout_fraction), 1, max_heldout_docs) evenly spaced ones — index
floor((j + ½)·D/h) for j < h — are held out, never trained on, for per-language MLM evaluation.
Languages with fewer than `min_docs_for_heldout` documents have no held-out split (their single
document is all the training text there is). The same corpus and arguments give the same split.

Languages are processed in parallel (`workers` processes, largest languages first); each worker
tokenizes single-threaded so that `workers` is the number of cores used.
"""

from __future__ import annotations

import hashlib
import logging
import math
import multiprocessing as mp
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from mmbert.data.shards import ShardWriter, copy_tokenizer, write_index

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrepareArgs:
    corpus_dir: str
    tokenizer_path: str
    out_dir: str
    dtype: str
    heldout_fraction: float
    max_heldout_docs: int
    min_docs_for_heldout: int
    batch_size: int


def heldout_indices(num_docs: int, heldout_fraction: float = 0.01, max_heldout_docs: int = 200,
                    min_docs_for_heldout: int = 2) -> list[int]:
    """Positions of the held-out documents of a language with `num_docs` documents (evenly spaced)."""
    if num_docs < max(2, min_docs_for_heldout) or heldout_fraction <= 0:
        return []
    h = min(max(1, math.ceil(num_docs * heldout_fraction)), max_heldout_docs, num_docs - 1)
    return sorted({int((j + 0.5) * num_docs / h) for j in range(h)})


_STATE: dict = {}


def _init_worker() -> None:
    # Each worker tokenizes single-threaded (no rayon pool per process), so `workers` = cores used.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def _worker_state(args: PrepareArgs):
    """Per-process tokenizer and corpus (loaded once per worker, not per language)."""
    key = (args.corpus_dir, args.tokenizer_path)
    if _STATE.get("key") != key:
        from mmbert.corpus.byo import open_corpus
        from mmbert.tokenizer import load_tokenizer
        _STATE.update(key=key, tok=load_tokenizer(args.tokenizer_path), corpus=open_corpus(args.corpus_dir))
    return _STATE["tok"], _STATE["corpus"]


def _prepare_language(job: tuple[str, PrepareArgs]) -> tuple[str, dict, Counter]:
    lang, args = job
    tok, corpus = _worker_state(args)
    before = Counter(corpus.skipped.counts)
    docs = list(corpus.documents(lang))
    held = set(heldout_indices(len(docs), args.heldout_fraction, args.max_heldout_docs,
                               args.min_docs_for_heldout))
    counts: dict[str, dict[str, int]] = {}
    if docs:
        train = ShardWriter(args.out_dir, lang, "train", args.dtype)
        heldout = ShardWriter(args.out_dir, lang, "heldout", args.dtype) if held else None
        try:
            for start in range(0, len(docs), args.batch_size):
                batch = docs[start:start + args.batch_size]
                for i, ids in enumerate(tok.encode_batch(batch, add_special_tokens=False), start):
                    (heldout if i in held else train).add(ids)
        except BaseException:
            train.abort()
            if heldout:
                heldout.abort()
            raise
        counts["train"] = train.close()
        if heldout:
            counts["heldout"] = heldout.close()
    skipped = Counter(corpus.skipped.counts)
    skipped.subtract(before)
    return lang, counts, +skipped


def prepare_shards(corpus_dir: str | os.PathLike, tokenizer: str | os.PathLike, out_dir: str | os.PathLike, *,
                   languages: list[str] | None = None, workers: int = 2, heldout_fraction: float = 0.01,
                   max_heldout_docs: int = 200, min_docs_for_heldout: int = 2, batch_size: int = 256,
                   progress: bool = True) -> dict:
    """Tokenize every (or the given) language of `corpus_dir` into shards under `out_dir`.

    `tokenizer` is a tokenizer directory or tokenizer.json (`mmbert.tokenizer.load_tokenizer`).
    Returns the index dict written to `<out_dir>/index.json`. Raises ValueError when no language
    yields any tokens.
    """
    from mmbert.corpus.byo import open_corpus
    from mmbert.tokenizer import load_tokenizer

    corpus = open_corpus(corpus_dir)
    tok_path = Path(tokenizer)
    tok = load_tokenizer(tok_path)
    langs = list(languages) if languages else corpus.languages
    for l in langs:
        corpus.files(l)  # clear error for a language not in the corpus
    dtype = "uint16" if tok.vocab_size <= 65536 else "uint32"
    tok_file = tok_path / "tokenizer.json" if tok_path.is_dir() else tok_path
    info = {**tok.info(), "path": str(tok_path), "sha256": hashlib.sha256(tok_file.read_bytes()).hexdigest()}
    args = PrepareArgs(str(corpus_dir), str(tok_path), str(out_dir), dtype, heldout_fraction, max_heldout_docs,
                       min_docs_for_heldout, batch_size)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    jobs = [(l, args) for l in sorted(langs, key=lambda l: -corpus.size_bytes(l))]
    results: dict[str, dict] = {}
    skipped: Counter = Counter(corpus.skipped.counts)
    total_tokens = 0
    # counted in corpus bytes, not languages: the largest go first, so a per-language rate would
    # promise hours at the start and seconds at the end
    size = {l: corpus.size_bytes(l) for l in langs}
    bar = tqdm(total=sum(size.values()), desc="tokenize", unit="B", unit_scale=True, smoothing=0,
               disable=not progress)
    if workers > 1:
        # fork is cheap; the workers never touch the parent's rayon pool because tokenization in
        # them is single-threaded (TOKENIZERS_PARALLELISM=false, and `tokenizers` itself disables
        # parallelism in forked children). spawn where fork does not exist.
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        pool = ctx.Pool(workers, initializer=_init_worker)
        it = pool.imap_unordered(_prepare_language, jobs)
    else:
        pool, it = None, map(_prepare_language, jobs)
    try:
        for lang, counts, sk in it:
            skipped.update(sk)
            if counts:  # (a language without documents is counted as "empty-language" by the reader)
                results[lang] = counts
                total_tokens += counts["train"]["tokens"] + counts.get("heldout", {}).get("tokens", 0)
            bar.update(size[lang])
            bar.set_postfix_str(f"{lang} {total_tokens / 1e6:.1f}M tokens")
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    if not results:
        raise ValueError(f"no language of {corpus_dir} produced any tokens; check the corpus "
                         f"(skipped: {dict(skipped) or 'nothing'})")
    info["copy"] = copy_tokenizer(tok_path, out_dir)  # shards remember their tokenizer
    write_index(out_dir, results, dtype, tok.vocab_size, info)
    if progress:
        train = sum(c["train"]["tokens"] for c in results.values())
        held = sum(c.get("heldout", {}).get("tokens", 0) for c in results.values())
        log.info(f"shards: {len(results)} languages, {train / 1e6:.2f}M train + {held / 1e6:.3f}M held-out tokens "
                 f"({dtype}) in {out_dir}" + (f"; skipped: {dict(skipped)}" if skipped else ""))
    return {"languages": results, "dtype": dtype, "vocab_size": tok.vocab_size, "skipped": dict(skipped)}
