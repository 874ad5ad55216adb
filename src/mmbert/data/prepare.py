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

Streaming, parallel, resumable (memory per worker does not grow with a language's size):
1. Tokenize: one job per corpus FILE, run by `workers` processes (each tokenizing single-threaded,
   so `workers` is the number of cores used), largest languages first. A job streams its file's
   documents (`mmbert.corpus.byo`; a .jsonl/.txt file is decoded whole, a .parquet file in
   batches) through the tokenizer in batches bounded by characters, and appends the ids to a part
   `<out>/<lang>/.parts/<k>.tok` with the document lengths in `<k>.len`; `<k>.json`, written last
   and atomically, marks the part done (with a fingerprint of the file, tokenizer and arguments).
   A document longer than `piece_chars` is tokenized in pieces cut just before a space, where this
   tokenizer's pre-tokenizer (Metaspace, split, no normalizer, no added token that strips spaces
   to its right) starts a new pre-token anyway — so the ids are those of the whole document, and a
   50 MB single-line document costs ~1 MB of text per batch instead of gigabytes of encodings
   (benchmarks/prepare_stream.py).
   (Another tokenizer pipeline gets no cuts: its long documents are tokenized whole.)
2. Split: when all parts of a language are done, D is known, the held-out positions follow, and
   the parts are copied in file order into `train` / `heldout` shards (`ShardWriter.add_many`, in
   slices of a few million tokens), then `<lang>/.done.json` records the counts and the parts
   are deleted.
The output is byte-identical to tokenizing the language's documents in one list (the previous
implementation; tests/data/test_prepare.py). A killed run, started again with the same arguments,
keeps the languages marked done and the parts marked done and redoes only the rest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing as mp
import os
import shutil
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mmbert.corpus.byo import SkipLog, _read_file, open_corpus
from mmbert.data.shards import ShardWriter, copy_tokenizer, write_index
from mmbert.tokenizer import load_tokenizer
from mmbert.utils import atomic_write

log = logging.getLogger(__name__)

PIECE_CHARS = 1 << 18  # documents longer than this are tokenized in pieces (at safe cut points)
BATCH_CHARS = 1 << 20  # characters per encode_batch call (besides `batch_size` texts): the
#                        encodings cost ~100-200 bytes per character while they exist
COPY_TOKENS = 1 << 23  # tokens per slice when copying parts into the shards


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
    tokenizer_sha256: str = ""
    piece_chars: int = PIECE_CHARS


def heldout_indices(num_docs: int, heldout_fraction: float = 0.01, max_heldout_docs: int = 200,
                    min_docs_for_heldout: int = 2) -> list[int]:
    """Positions of the held-out documents of a language with `num_docs` documents (evenly spaced)."""
    if num_docs < max(2, min_docs_for_heldout) or heldout_fraction <= 0:
        return []
    h = min(max(1, math.ceil(num_docs * heldout_fraction)), max_heldout_docs, num_docs - 1)
    return sorted({int((j + 0.5) * num_docs / h) for j in range(h)})


# ----------------------------------------------------------------------------- long documents
def safe_cut_before(tok) -> str | None:
    """The character before which any document may be cut without changing its token ids, or None.

    True for mmbert's tokenizer pipeline: no normalizer, BPE, pre-tokenizer Metaspace(split=True,
    prepend_scheme="never") [+ Digits] — every space starts a new pre-token, and BPE never merges
    across pre-tokens; cuts go before the first space of a whitespace run, so an added token with
    lstrip=True (<mask>) still sees the whole run. An added token with rstrip=True would swallow
    the run after it, so then (and for any other pipeline) there is no safe cut."""
    spec = json.loads(tok.hf.to_str())
    if spec.get("normalizer") is not None or (spec.get("model") or {}).get("type") != "BPE":
        return None
    pre = spec.get("pre_tokenizer") or {}
    subs = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    metaspace = [p for p in subs if p.get("type") == "Metaspace"]
    if (not metaspace or any(p.get("type") not in ("Metaspace", "Digits") for p in subs)
            or not all(m.get("split") and m.get("prepend_scheme") == "never" and m.get("replacement") == "▁"
                       for m in metaspace)):
        return None
    if any(t.get("rstrip") for t in spec.get("added_tokens", [])):
        return None
    return " "


def _cut_at(text: str, p: int, cut: str) -> bool:
    """A cut just before text[p] is safe: text[p] is the cut character and starts a whitespace run
    (an added token with lstrip=True, like <mask>, swallows the whole run to its left — so the run
    must stay in one piece, after the cut)."""
    return text[p] == cut and not text[p - 1].isspace()


def split_document(text: str, limit: int, cut: str | None) -> list[str]:
    """`text` in pieces of about `limit` characters, each cut just before a `cut` character that
    starts a whitespace run (see safe_cut_before); one piece when there is no safe cut."""
    if cut is None or len(text) <= limit:
        return [text]
    pieces, start = [], 0
    while len(text) - start > limit:
        hi = start + limit + 1
        p = text.rfind(cut, start + 1, hi)
        while p > start and not _cut_at(text, p, cut):
            p = text.rfind(cut, start + 1, p)
        if p <= start:  # no cut in this window: the next one after it (a longer piece)
            p = text.find(cut, start + limit)
            while p != -1 and not _cut_at(text, p, cut):
                p = text.find(cut, p + 1)
            if p == -1:
                break
        pieces.append(text[start:p])
        start = p
    pieces.append(text[start:])
    return pieces


# ----------------------------------------------------------------------------- 1. tokenize a file
_STATE: dict = {}


def _init_worker() -> None:
    # Each worker tokenizes single-threaded (no rayon pool per process), so `workers` = cores used.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def _worker_tokenizer(args: PrepareArgs):
    if _STATE.get("key") != args.tokenizer_path:
        tok = load_tokenizer(args.tokenizer_path)
        _STATE.update(key=args.tokenizer_path, tok=tok, cut=safe_cut_before(tok))
    return _STATE["tok"], _STATE["cut"]


def _fingerprint(path: Path, args: PrepareArgs) -> dict:
    st = path.stat()
    return {"file": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "args": asdict(args)}


def _part_paths(args: PrepareArgs, lang: str, k: int) -> tuple[Path, Path, Path]:
    d = Path(args.out_dir) / lang / ".parts"
    return d / f"{k:06d}.tok", d / f"{k:06d}.len", d / f"{k:06d}.json"


def _tokenize_file(job: tuple[str, int, str, PrepareArgs]) -> tuple[str, int, dict]:
    """Tokenize one corpus file into a part; returns (lang, k, {"docs", "tokens", "skipped"})."""
    lang, k, path, args = job
    path = Path(path)
    tok_path, len_path, marker = _part_paths(args, lang, k)
    fp = _fingerprint(path, args)
    if marker.is_file():
        done = json.loads(marker.read_text())
        if done.get("fingerprint") == fp:
            return lang, k, done
    tok, cut = _worker_tokenizer(args)
    dtype = np.dtype(args.dtype)
    marker.parent.mkdir(parents=True, exist_ok=True)
    skipped = SkipLog()
    docs = tokens = 0
    with open(str(tok_path) + ".tmp", "wb") as ft, open(str(len_path) + ".tmp", "wb") as fl:
        pending: list[tuple[str, bool]] = []  # (piece, last piece of its document)
        chars = current = 0  # characters pending; tokens of the document being written so far

        def flush() -> None:
            # each piece's ids go straight to the part file: a document cut in pieces is never
            # held whole, as text encodings or as ids
            nonlocal chars, current, docs, tokens
            if not pending:
                return
            for (_, last), ids in zip(pending, tok.encode_batch([p for p, _ in pending], add_special_tokens=False)):
                a = np.asarray(ids, dtype=np.int64)
                if a.size and (int(a.min()) < 0 or int(a.max()) > np.iinfo(dtype).max):
                    raise ValueError(f"token id {int(a.max())} does not fit {dtype.name}")
                ft.write(a.astype(dtype).tobytes())
                current += int(a.size)
                if last:
                    fl.write(np.uint64(current).tobytes())
                    docs, tokens, current = docs + 1, tokens + current, 0
            pending.clear()
            chars = 0

        for doc in _read_file(path, skipped):
            if not doc.strip():
                continue
            pieces = split_document(doc, args.piece_chars, cut)
            for j, piece in enumerate(pieces):
                pending.append((piece, j == len(pieces) - 1))
                chars += len(piece)
                if chars >= BATCH_CHARS or len(pending) >= args.batch_size:
                    flush()
        flush()
    os.replace(str(tok_path) + ".tmp", tok_path)
    os.replace(str(len_path) + ".tmp", len_path)
    done = {"fingerprint": fp, "docs": docs, "tokens": tokens, "skipped": dict(skipped.counts),
            "examples": {r: list(v) for r, v in skipped.examples.items()}}
    atomic_write(marker, json.dumps(done))
    return lang, k, done


# ----------------------------------------------------------------------------- 2. split a language
def _split_language(lang: str, nfiles: int, args: PrepareArgs) -> dict[str, dict[str, int]]:
    """Copy a language's finished parts, in file order, into its train / heldout shards."""
    parts = [_part_paths(args, lang, k) for k in range(nfiles)]
    n_docs = [int(json.loads(m.read_text())["docs"]) for _, _, m in parts]
    held = heldout_indices(sum(n_docs), args.heldout_fraction, args.max_heldout_docs, args.min_docs_for_heldout)
    counts: dict[str, dict[str, int]] = {}
    if not sum(n_docs):
        return counts
    train = ShardWriter(args.out_dir, lang, "train", args.dtype)
    heldout = ShardWriter(args.out_dir, lang, "heldout", args.dtype) if held else None
    try:
        g0 = 0  # global index of the part's first document
        for (tok_path, len_path, _), n in zip(parts, n_docs):
            if n == 0:
                continue
            lens = np.fromfile(len_path, dtype=np.uint64)
            ids = np.memmap(tok_path, dtype=np.dtype(args.dtype), mode="r") if tok_path.stat().st_size else \
                np.zeros(0, np.dtype(args.dtype))
            offs = np.concatenate([[0], np.cumsum(lens, dtype=np.uint64)]).astype(np.int64)
            # runs of documents between held-out ones; held-out ones one by one
            cuts = [h - g0 for h in held if g0 <= h < g0 + n]
            a = 0
            for b in cuts + [n]:
                while a < b:  # train documents [a, b), in slices of about COPY_TOKENS tokens
                    e = int(np.searchsorted(offs, offs[a] + COPY_TOKENS, side="right")) - 1
                    e = min(max(e, a + 1), b)
                    train.add_many(np.asarray(ids[offs[a]:offs[e]]), lens[a:e])
                    a = e
                if b < n:
                    heldout.add(np.asarray(ids[offs[b]:offs[b + 1]]))
                    a = b + 1
            g0 += n
            del ids
        counts["train"] = train.close()
        if heldout:
            counts["heldout"] = heldout.close()
    except BaseException:
        train.abort()
        if heldout:
            heldout.abort()
        raise
    return counts


def _language_fingerprint(files: list[Path], args: PrepareArgs) -> list[dict]:
    return [_fingerprint(f, args) for f in files]


def _tokens(counts: dict[str, dict[str, int]]) -> int:
    """Train + held-out tokens of one language's counts."""
    return counts["train"]["tokens"] + counts.get("heldout", {}).get("tokens", 0)


def _jobs_to_do(files: dict[str, list[Path]], args: PrepareArgs, results: dict[str, dict],
                skipped: Counter) -> list[tuple[str, int, str, PrepareArgs]]:
    """(language, part, file, args) for every file of the languages not yet finished, in `files`' order.
    A language that an earlier (killed) run finished with the same inputs is not redone: its counts go
    into `results` and its skips into `skipped`."""
    jobs = []
    for l, fs in files.items():
        marker = Path(args.out_dir) / l / ".done.json"
        if marker.is_file():  # finished by an earlier (killed) run with the same inputs
            done = json.loads(marker.read_text())
            if done.get("fingerprint") == _language_fingerprint(fs, args):
                skipped.update(done["skipped"])
                if done["counts"]:
                    results[l] = done["counts"]
                continue
        jobs += [(l, k, str(f), args) for k, f in enumerate(fs)]
    return jobs


def _finish_language(lang: str, parts: list[dict], files: list[Path], args: PrepareArgs,
                     skipped: Counter) -> dict[str, dict[str, int]]:
    """Every file of `lang` is tokenized (`parts`): split it into its shards, add its skips to
    `skipped`, mark it done (for a resumed run) and drop its parts; return its counts."""
    out = Path(args.out_dir)
    lang_skipped: Counter = Counter()
    for p in parts:
        lang_skipped.update(p["skipped"])
    if sum(p["docs"] for p in parts) == 0:
        lang_skipped["empty-language"] += 1  # as Corpus.documents() counts it
    counts = _split_language(lang, len(files), args)
    skipped.update(lang_skipped)
    atomic_write(out / lang / ".done.json", json.dumps(
        {"fingerprint": _language_fingerprint(files, args), "counts": counts, "skipped": dict(lang_skipped)}))
    shutil.rmtree(out / lang / ".parts", ignore_errors=True)
    return counts


def prepare_shards(corpus_dir: str | os.PathLike, tokenizer: str | os.PathLike, out_dir: str | os.PathLike, *,
                   languages: list[str] | None = None, workers: int = 2, heldout_fraction: float = 0.01,
                   max_heldout_docs: int = 200, min_docs_for_heldout: int = 2, batch_size: int = 256,
                   progress: bool = True, piece_chars: int = PIECE_CHARS) -> dict:
    """Tokenize every (or the given) language of `corpus_dir` into shards under `out_dir`.

    `tokenizer` is a tokenizer directory or tokenizer.json (`mmbert.tokenizer.load_tokenizer`).
    Returns the index dict written to `<out_dir>/index.json`. Raises ValueError when no language
    yields any tokens. Started again after a kill with the same arguments, it resumes (module
    docstring).
    """
    corpus = open_corpus(corpus_dir)
    tok_path = Path(tokenizer)
    tok = load_tokenizer(tok_path)
    langs = list(languages) if languages else corpus.languages
    for l in langs:
        corpus.files(l)  # clear error for a language not in the corpus
    dtype = "uint16" if tok.vocab_size <= 65536 else "uint32"
    tok_file = tok_path / "tokenizer.json" if tok_path.is_dir() else tok_path
    sha = hashlib.sha256(tok_file.read_bytes()).hexdigest()
    info = {**tok.info(), "path": str(tok_path), "sha256": sha}
    args = PrepareArgs(str(corpus_dir), str(tok_path), str(out_dir), dtype, heldout_fraction, max_heldout_docs,
                       min_docs_for_heldout, batch_size, sha, int(piece_chars))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    order = sorted(langs, key=lambda l: -corpus.size_bytes(l))
    files = {l: corpus.files(l) for l in order}
    results: dict[str, dict] = {}
    skipped: Counter = Counter(corpus.skipped.counts)
    jobs = _jobs_to_do(files, args, results, skipped)
    left = {l: len(files[l]) for l, _, _, _ in jobs}  # language → parts still to come
    got: dict[str, list] = {l: [None] * n for l, n in left.items()}
    total_tokens = sum(_tokens(c) for c in results.values())
    # counted in corpus bytes, not files or languages: the largest languages go first, so a
    # per-language rate would promise hours at the start and seconds at the end
    size = {job[2]: Path(job[2]).stat().st_size for job in jobs}
    bar = tqdm(total=sum(size.values()), desc="tokenize", unit="B", unit_scale=True, smoothing=0,
               disable=not progress)
    if workers > 1 and len(jobs) > 1:
        # fork is cheap; the workers never touch the parent's rayon pool because tokenization in
        # them is single-threaded (TOKENIZERS_PARALLELISM=false, and `tokenizers` itself disables
        # parallelism in forked children). spawn where fork does not exist.
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        pool = ctx.Pool(workers, initializer=_init_worker)
        it = pool.imap_unordered(_tokenize_file, jobs)
    else:
        pool, it = None, map(_tokenize_file, jobs)
    try:
        for lang, k, part in it:
            got[lang][k] = part
            left[lang] -= 1
            bar.update(size[str(files[lang][k])])
            if left[lang]:
                continue
            counts = _finish_language(lang, got[lang], files[lang], args, skipped)
            if counts:  # (a language without documents is counted as "empty-language")
                results[lang] = counts
                total_tokens += _tokens(counts)
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
