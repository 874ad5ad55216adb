"""The training data stream: language sampling → chunking → best-fit packing → MLM masking → batches.

    from mmbert.data.loader import MLMLoader
    loader = MLMLoader("out/shards", languages="top:60", tau=0.7, mask_rate=0.3, seq_len=1024,
                       rows_per_batch=64, seed=0)          # rank / world_size from torch.distributed
    batch = next(loader)            # or loader.next_batch(rows) — rows = GLOBAL rows (batch warm-up)
    loss = model(input_ids=batch["input_ids"], cu_seqlens=batch["cu_seqlens"],
                 max_seqlen=batch["max_seqlen"], position_ids=batch["position_ids"],
                 labels=batch["labels"]).loss
    state = loader.state_dict()     # JSON-able; MLMLoader(...same args...).load_state_dict(state)
    loader.set_phase(languages="top:110", tau=0.5, mask_rate=0.15, seq_len=8192)   # phase boundary
    # batch-size warm-up: ask for the rows your schedule wants at this point of the run
    batch = loader.next_batch(rows_for_tokens(batch_tokens_at(loader.tokens_seen), 8192, world_size))

The stream (all deterministic functions of `seed`):
1. Language draws. A phase's languages get p_ℓ ∝ w_ℓ·n_ℓ^τ (`mmbert.data.sampling`, optional epoch cap).
   The next CHUNK comes from the language furthest behind its token share: argmax_ℓ (p_ℓ·T − t_ℓ),
   with t_ℓ the content tokens drawn from ℓ in this phase and T = Σ t_ℓ (stratified sampling); a
   language finishes its open document chunk by chunk before starting the next. So the token shares
   equal p at every point of the run, within one chunk per language (for what is drawn; the packer's
   buffer of `buffer_size` chunks delays what is emitted), like mmBERT's released mixtures, which
   fix each language's token count per phase. (Independent random draws per
   document match p only in expectation: on the embedded corpus, whose documents run from a few to
   ~100k tokens, they were still 9% off in total variation after 2M tokens and 2% after 40M.)
2. Documents. Each language walks through a random permutation of its `train` documents (the `heldout`
   split is never read), a fresh one per epoch (`default_rng([seed, crc32(lang), epoch])`); a
   language's position carries over phase boundaries. `epochs_seen()` reports the repetition.
3. Chunking and packing (`mmbert.data.packing`): each document becomes `<bos> … <eos>` chunks
   (back-filled tails) that a streaming greedy best-fit packer puts into rows of exactly seq_len.
4. Masking (`mmbert.data.masking.apply_mask`, 80/10/10, specials never selected) with a numpy
   generator seeded by (seed, global row index) — so a row's mask does not depend on batch size or
   world size. The loader does its per-row work in numpy (single-threaded) rather than torch, whose
   intra-op thread pool belongs to the training step (on a busy 2-core box, small torch ops
   contending for it were 50× slower).

One GLOBAL sequence of rows exists per seed; `next_batch(rows)` takes the next `rows` of it. Every
rank computes the same packing (cheap: lengths and references only) and materialises only its own
contiguous share: rank r of W gets rows [start + r·rows/W, start + (r+1)·rows/W).

Guarantees:
- Determinism: same arguments + same sequence of `next_batch`/`set_phase` calls → same batches,
  bit for bit, on any machine (numpy PCG64 streams only; no threads involved).
- Resume: `state_dict()` after batch k, loaded into a fresh loader built with the same arguments,
  yields exactly batches k+1, k+2, … of the uninterrupted run (state includes the phase parameters,
  so a restored loader is also in the right phase). The state is the same on every rank and does not
  depend on rank or world size: save it from rank 0, load it everywhere — even with a new W.
- Distributed: for a global batch of R rows (R divisible by W), the union over ranks of the W local
  batches is exactly the single-process (W = 1) batch of R rows at that point of the stream: the same
  rows, the same masks, in rank order. Ranks never share a row.
Phase switch (`set_phase`): a change of languages/τ/weights/seq_len rebuilds the sampler; chunks
already buffered in the packer carry over when their language stays active and they fit the new
seq_len, the others are dropped (their documents count as drawn); a language's document in
progress continues, chunked for the new seq_len, when that language is next drawn. A change of mask
rate alone takes effect from the next row and leaves the stream untouched.

Batch dict (rank-local, R_local rows of seq_len, N = R_local·seq_len, D = segments):
  input_ids, labels (-100 = not a target), position_ids: int64 [N]; cu_seqlens: int32 [D+1] with
  per-row offsets (trailing padding of a row is its own segment); max_seqlen: int; doc_lang: int64 [D]
  index into `languages` (all shard languages, sorted; -1 = padding segment); languages: list[str];
  num_masked, num_tokens (non-pad), rows, seq_len, first_row (global index): int. Per-token
  language, e.g. for per-language losses: `doc_lang.repeat_interleave(cu_seqlens.diff())`.
"""

from __future__ import annotations

import os
import zlib
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from mmbert.data.masking import IGNORE_INDEX, apply_mask, check_mask_rate, special_table
from mmbert.data.packing import (BestFitPacker, PackingError, chunk_spans, materialize_row,
                                 row_layout)
from mmbert.data.sampling import SamplingError, SamplingPlan, plan_phase
from mmbert.data.shards import Shard, ShardIndex, open_shard
from mmbert.tokenizer import resolve_special_ids
from mmbert.utils import BOS_ID, EOS_ID, MASK_ID, PAD_ID, SPECIAL_TOKENS, UNK_ID

STATE_VERSION = 1
DEFAULT_SPECIAL_IDS = tuple(range(len(SPECIAL_TOKENS)))  # mmBERT's: pad, eos/sep, bos/cls, unk, mask
_MMBERT_IDS = {"pad_id": PAD_ID, "eos_id": EOS_ID, "bos_id": BOS_ID, "unk_id": UNK_ID, "mask_id": MASK_ID}


class LoaderError(ValueError):
    """Bad loader arguments or a state that does not match them."""


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _ensure_open_files(n: int) -> None:
    """Memory-mapped shards hold a file descriptor each; raise the soft limit when a phase with many
    languages needs more than it allows (up to the hard limit), else say how to fix it."""
    try:
        import resource
    except ImportError:      # not on POSIX: nothing to do
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = n + 256           # headroom for everything else the process opens
    if soft == resource.RLIM_INFINITY or need <= soft:
        return
    if hard != resource.RLIM_INFINITY and need > hard:
        raise LoaderError(f"the phase needs about {need} open files but the hard limit is {hard}; "
                          f"raise it (ulimit -Hn) or use fewer languages")
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def rows_for_tokens(batch_tokens: int, seq_len: int, world_size: int = 1) -> int:
    """Global rows for a target of `batch_tokens` tokens per step (batch-size warm-up helper):
    rounded to the nearest multiple of `world_size`, at least `world_size`."""
    r = max(1, round(batch_tokens / seq_len / world_size))
    return r * world_size


class MLMLoader:
    """Deterministic, resumable, rank-aware packed MLM batches from token shards (module docstring).

    Args (plain stream parameters; `mmbert.train` maps a recipe Phase onto them):
      shards: folder with index.json (`mmbert.data.shards`).
      languages: "all" | "top:K" | "min:X" | list of names (`mmbert.data.sampling.select_languages`).
      tau: sampling temperature (> 0).  mask_rate: in (0, 1).  seq_len: row length (≥ 3).
      rows_per_batch: default GLOBAL rows per `next(loader)`; divisible by world_size.
      seed: stream seed.  rank / world_size: default from torch.distributed, else 0 / 1.
      language_weights: extra factor w_ℓ on p_ℓ (renormalised), e.g. {"eng_Latn": 4.0}.
      token_budget, epoch_cap: planned tokens for the phase and an optional cap on epochs per language
        (excess redistributed, `mmbert.data.sampling.cap_epochs`); the budget also fills the plan table.
      bos_id, eos_id, pad_id, mask_id: default to index.json's tokenizer info (`*_id` keys), else
        mmBERT's 2, 1, 0, 4.  special_ids: never masked; default {0..4} ∪ those ids ∪ unk_id ∪
        tokenizer.special_ids.  vocab_size: default from index.json.
      buffer_size: packer buffer in chunks. Bigger = fuller rows but more tokens in flight, which
        delays the language shares (on the embedded corpus at seq 1024: 256 → 99.92% real tokens and
        shares within 1.2% total variation of p after 2,000 rows; 4096 → 99.98% but 4.7%).
        min_tail: chunk tail rule (`mmbert.data.packing.chunk_spans`).
    """

    def __init__(self, shards: str | os.PathLike, *, languages: str | Sequence[str] = "all",
                 tau: float = 0.7, mask_rate: float = 0.3, seq_len: int = 1024, rows_per_batch: int = 8,
                 seed: int = 0, rank: int | None = None, world_size: int | None = None,
                 language_weights: Mapping[str, float] | None = None, token_budget: float | None = None,
                 epoch_cap: float | None = None, shares: Mapping[str, float] | None = None,
                 bos_id: int | None = None, eos_id: int | None = None,
                 pad_id: int | None = None, mask_id: int | None = None,
                 special_ids: Sequence[int] | None = None, vocab_size: int | None = None,
                 buffer_size: int = 256, min_tail: int | None = None):
        self.index = ShardIndex.load(shards)
        self.root = self.index.root
        self.all_languages = self.index.languages
        self._lang_pos = {l: i for i, l in enumerate(self.all_languages)}
        d_rank, d_world = _dist_rank_world()
        self.rank = d_rank if rank is None else int(rank)
        self.world_size = d_world if world_size is None else int(world_size)
        if not 0 <= self.rank < self.world_size:
            raise LoaderError(f"rank {self.rank} is outside world_size {self.world_size}")
        self.seed = int(seed)
        tok = self.index.tokenizer if isinstance(self.index.tokenizer, dict) else {}
        # given ids, else the tokenizer info `mmbert data prepare` wrote, else mmBERT's (synthetic shards)
        ids = resolve_special_ids(None, tok, _MMBERT_IDS, pad=pad_id, cls=bos_id, sep=eos_id, mask=mask_id)
        self.bos_id, self.eos_id, self.pad_id, self.mask_id = ids.cls, ids.sep, ids.pad, ids.mask
        self.vocab_size = int(vocab_size or self.index.vocab_size)
        specials = set(DEFAULT_SPECIAL_IDS if special_ids is None else special_ids)
        specials |= {int(x) for x in tok.get("special_ids", [])}
        specials |= {self.bos_id, self.eos_id, self.pad_id, self.mask_id}
        if isinstance(tok.get("unk_id"), int):
            specials.add(tok["unk_id"])
        if max(specials) >= self.vocab_size or min(specials) < 0:
            raise LoaderError(f"special ids {sorted(specials)} must lie in [0, vocab_size={self.vocab_size})")
        self._is_special, self._allowed = special_table(sorted(specials), self.vocab_size, self.mask_id)
        self.buffer_size, self.min_tail = int(buffer_size), min_tail
        self.rows_per_batch = self._check_rows(rows_per_batch)
        self._shards: dict[str, Shard] = {}
        self._perms: dict[str, tuple[int, np.ndarray]] = {}
        self.cursors: dict[str, list[int]] = {}      # lang → [epoch, position in that epoch's permutation]
        self.open_docs: dict[str, list[int]] = {}    # lang → [doc, next token] of a document in progress
        self.rows_emitted = 0                         # global rows handed out so far (all phases)
        self.tokens_seen = 0                          # global rows × their seq_len
        self.phase_index = -1
        self.packer: BestFitPacker | None = None
        self.set_phase(languages=languages, tau=tau, mask_rate=mask_rate, seq_len=seq_len,
                       language_weights=language_weights, token_budget=token_budget, epoch_cap=epoch_cap,
                       shares=shares)

    # ------------------------------------------------------------------ phase parameters
    def _check_rows(self, rows: int) -> int:
        rows = int(rows)
        if rows < 1 or rows % self.world_size:
            raise LoaderError(f"rows per batch ({rows}) must be a positive multiple of world_size "
                              f"({self.world_size}); each rank takes rows/world_size rows")
        return rows

    def set_phase(self, *, languages: str | Sequence[str] | None = None, tau: float | None = None,
                  mask_rate: float | None = None, seq_len: int | None = None,
                  language_weights: Mapping[str, float] | None = None, token_budget: float | None = None,
                  epoch_cap: float | None = None, shares: Mapping[str, float] | None = None) -> SamplingPlan:
        """Switch phase parameters (call at a phase boundary, on every rank, at the same stream
        position). Arguments left as None keep their value, except budget/cap/weights/shares, which
        belong to one phase and reset unless given (shares: fixed token fractions, see `plan_phase`). Validates everything before changing anything."""
        cur = getattr(self, "phase", None) or {}
        new = {"languages": cur.get("languages_spec") if languages is None else languages,
               "tau": cur.get("tau") if tau is None else float(tau),
               "mask_rate": cur.get("mask_rate") if mask_rate is None else mask_rate,
               "seq_len": cur.get("seq_len") if seq_len is None else int(seq_len),
               "weights": dict(language_weights or {}), "budget": token_budget, "epoch_cap": epoch_cap,
               "shares": dict(shares or {})}
        check_mask_rate(new["mask_rate"])
        if new["seq_len"] < 3:
            raise PackingError(f"seq_len must be ≥ 3 to hold <bos> token <eos>, got {new['seq_len']}")
        if self.min_tail is not None and not 1 <= self.min_tail <= new["seq_len"] - 2:
            raise PackingError(f"min_tail {self.min_tail} must be in [1, seq_len - 2 = {new['seq_len'] - 2}]")
        counts = {l: self.index.tokens(l) if self.index.has(l) else 0 for l in self.all_languages}
        spec = new["languages"] if isinstance(new["languages"], str) else list(new["languages"])
        plan = plan_phase(counts, spec, new["tau"], budget=new["budget"], epoch_cap=new["epoch_cap"],
                          name=f"phase {self.phase_index + 1}", weights=new["weights"], shares=new["shares"])
        _ensure_open_files(sum(2 for l in plan.languages if l not in self._shards) + len(self._shards) * 2)
        for l in plan.languages:                      # open (and validate) every shard up front
            if l not in self._shards:
                self._shards[l] = open_shard(self.root, l, "train", index=self.index)
            if len(self._shards[l]) == 0:
                raise SamplingError(f"language {l} has no training documents; drop it from the phase")
        stream_changed = (cur.get("languages") != plan.languages or cur.get("tau") != new["tau"]
                          or cur.get("seq_len") != new["seq_len"] or cur.get("probs") != plan.probs)
        self.plan = plan
        self.phase = {"languages_spec": spec, "languages": plan.languages, "tau": new["tau"],
                      "mask_rate": float(new["mask_rate"]), "seq_len": new["seq_len"], "probs": plan.probs,
                      "weights": new["weights"], "budget": new["budget"], "epoch_cap": new["epoch_cap"],
                      "shares": new["shares"]}
        if stream_changed:
            self.phase_index += 1
            self.plan.name = f"phase {self.phase_index}"
            self._build_sampler()
            old = self.packer
            self.packer = BestFitPacker(new["seq_len"], self.buffer_size)
            if old is not None:                        # carry buffered chunks that still apply
                active = {self._lang_pos[l] for l in plan.languages}
                for n, ref in old._items.values():
                    if ref[0] in active and n <= new["seq_len"]:
                        self.packer.add(n, ref)
            self.drawn = np.zeros(len(plan.languages), dtype=np.int64)   # tokens per active language, this phase
        return plan

    def _build_sampler(self) -> None:
        self._p = np.asarray(self.phase["probs"], dtype=np.float64)

    def _perm(self, lang: str, epoch: int) -> np.ndarray:
        cached = self._perms.get(lang)         # one epoch's permutation per language
        if cached is None or cached[0] != epoch:
            n = len(self._shards[lang])
            cached = (epoch, np.random.default_rng([self.seed, zlib.crc32(lang.encode()), epoch]).permutation(n))
            self._perms[lang] = cached
        return cached[1]

    def _next_chunk(self) -> tuple[int, int, int, int]:
        """One chunk [lang index, doc, start, end] from the language furthest behind its token share
        p_ℓ·T (ties: first by name). A language continues its open document before starting the
        next one from its permutation, so a long document's chunks interleave with other languages."""
        i = int(np.argmax(self._p * float(self.drawn.sum()) - self.drawn))
        lang = self.phase["languages"][i]
        sh = self._shards[lang]
        if lang in self.open_docs:
            doc, start = self.open_docs.pop(lang)
        else:
            epoch, pos = self.cursors.setdefault(lang, [0, 0])
            doc, start = int(self._perm(lang, epoch)[pos]), 0
            pos += 1
            self.cursors[lang] = [epoch + 1, 0] if pos == len(sh) else [epoch, pos]
        length = int(sh.offsets[doc + 1] - sh.offsets[doc])
        # the rest of the document chunks exactly like the whole would (only its tail is adjusted)
        spans = chunk_spans(length - start, self.phase["seq_len"], self.min_tail)
        s, e = start + spans[0][0], start + spans[0][1]
        if e < length:
            self.open_docs[lang] = [doc, e]
        self.drawn[i] += e - s
        return self._lang_pos[lang], doc, s, e

    def _next_row_refs(self) -> tuple[list, list[int]]:
        while not self.packer.full:
            li, doc, s, e = self._next_chunk()
            self.packer.add(e - s + 2, [li, doc, s, e])
        return self.packer.pop()

    def _materialize(self, refs: list, lens: list[int], row_index: int) -> dict[str, Any]:
        seq_len = self.phase["seq_len"]
        chunks = []
        for li, doc, s, e in refs:
            sh = self._shards[self.all_languages[li]]
            o = int(sh.offsets[doc])
            chunks.append(sh.tokens[o + s:o + e])
        ids = materialize_row(chunks, seq_len, self.bos_id, self.eos_id, self.pad_id)
        if ids.max() >= self.vocab_size:
            raise LoaderError(f"shard token id {int(ids.max())} ≥ vocab_size {self.vocab_size}; "
                              f"the shards were made with another tokenizer")
        cu, pos = row_layout(lens, seq_len)
        # the row's mask depends only on (seed, global row index): independent of batch size and ranks
        rng = np.random.default_rng([self.seed, row_index])
        inputs, labels = apply_mask(ids, self.phase["mask_rate"], self._is_special, self._allowed,
                                    self.mask_id, rng)
        doc_lang = [li for li, _, _, _ in refs] + ([-1] if len(cu) - 1 > len(refs) else [])
        return {"input_ids": inputs, "labels": labels, "position_ids": pos,
                "cu_seqlens": cu, "doc_lang": doc_lang, "num_pad": seq_len - sum(lens)}

    def next_batch(self, rows: int | None = None) -> dict[str, Any]:
        """The next `rows` GLOBAL rows of the stream (default `rows_per_batch`); returns this rank's
        contiguous share of rows/world_size rows as one packed batch dict (module docstring)."""
        rows = self.rows_per_batch if rows is None else self._check_rows(rows)
        per_rank = rows // self.world_size
        first = self.rows_emitted
        lo = first + self.rank * per_rank
        out = []
        for j in range(rows):
            refs, lens = self._next_row_refs()
            if lo <= first + j < lo + per_rank:
                out.append(self._materialize(refs, lens, first + j))
        self.rows_emitted += rows
        self.tokens_seen += rows * self.phase["seq_len"]
        return self._collate(out, lo)

    def _collate(self, rows: list[dict[str, Any]], first_row: int) -> dict[str, Any]:
        seq_len = self.phase["seq_len"]
        cus = [np.asarray(r["cu_seqlens"][1:], dtype=np.int64) + i * seq_len for i, r in enumerate(rows)]
        cu = np.concatenate([np.zeros(1, np.int64)] + cus)
        labels = np.concatenate([r["labels"] for r in rows])
        return {
            "input_ids": torch.from_numpy(np.concatenate([r["input_ids"] for r in rows])),
            "labels": torch.from_numpy(labels),
            "position_ids": torch.from_numpy(np.concatenate([r["position_ids"] for r in rows])),
            "cu_seqlens": torch.from_numpy(cu.astype(np.int32)),
            "max_seqlen": int(np.diff(cu).max()),
            "doc_lang": torch.tensor([d for r in rows for d in r["doc_lang"]], dtype=torch.long),
            "languages": self.all_languages,
            "num_masked": int(np.count_nonzero(labels != IGNORE_INDEX)),
            "num_tokens": len(rows) * seq_len - sum(r["num_pad"] for r in rows),
            "rows": len(rows),
            "seq_len": seq_len,
            "first_row": first_row,
        }

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        return self.next_batch()

    # ------------------------------------------------------------------ accounting
    def epochs_seen(self) -> dict[str, float]:
        """Documents drawn per language, in epochs of that language's data (all phases so far)."""
        return {l: e + p / len(self._shards[l]) for l, (e, p) in sorted(self.cursors.items())}

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        """Plain JSON-able state (ints, floats, strings, lists, dicts): identical on every rank."""
        return {"version": STATE_VERSION, "seed": self.seed, "shard_languages": self.all_languages,
                "phase": {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.phase.items()},
                "phase_index": self.phase_index, "drawn": self.drawn.tolist(),
                "cursors": {k: list(v) for k, v in self.cursors.items()},
                "open_docs": {k: list(v) for k, v in self.open_docs.items()},
                "rows_emitted": self.rows_emitted, "tokens_seen": self.tokens_seen,
                "packer": self.packer.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a `state_dict()` (from any rank, any world size) into a loader built on the same
        shards and seed; the phase parameters come from the state."""
        if state.get("version") != STATE_VERSION:
            raise LoaderError(f"loader state version {state.get('version')!r} is not {STATE_VERSION}; "
                              f"it was written by another mmbert version")
        if int(state["seed"]) != self.seed or list(state["shard_languages"]) != self.all_languages:
            raise LoaderError("loader state was saved with a different seed or shard set; build the loader "
                              f"with seed={state['seed']} on the same shards to resume")
        ph = state["phase"]
        self.set_phase(languages=ph["languages_spec"], tau=ph["tau"], mask_rate=ph["mask_rate"],
                       seq_len=ph["seq_len"], language_weights=ph["weights"], token_budget=ph["budget"],
                       epoch_cap=ph["epoch_cap"], shares=ph.get("shares"))
        if self.phase["probs"] != ph["probs"] or self.phase["languages"] != ph["languages"]:
            raise LoaderError("the shards' token counts changed since the state was saved; resume on the same shards")
        self.phase_index = int(state["phase_index"])
        self._build_sampler()
        self.drawn = np.asarray(state["drawn"], dtype=np.int64)
        self.cursors = {k: [int(e), int(p)] for k, (e, p) in state["cursors"].items()}
        self.open_docs = {k: [int(d), int(t)] for k, (d, t) in state["open_docs"].items()}
        self.rows_emitted, self.tokens_seen = int(state["rows_emitted"]), int(state["tokens_seen"])
        self.packer = BestFitPacker(ph["seq_len"], self.buffer_size)
        self.packer.load_state_dict(state["packer"])


class Prefetcher:
    """Produce the next batches of an `MLMLoader` in a background thread (`depth` ahead).

        stream = Prefetcher(loader, depth=2)
        for batch in stream: ...                 # the same batches, in the same order, as `loader`
        state = stream.state_dict()              # the state after the last batch HANDED OUT
        stream.close()                           # stops the thread, rewinds `loader` to that state

    It calls `loader.next_batch()` with the default `rows_per_batch` only; to change batch size or
    phase, `close()` first (the loader is then exactly after the last consumed batch), change it, and
    wrap it again. Each produced batch carries a snapshot of the loader state taken right after it,
    so resume stays bit-exact. The per-row work is numpy, which releases the GIL for its array ops.
    """

    def __init__(self, loader: MLMLoader, depth: int = 2):
        import queue
        import threading

        if depth < 1:
            raise LoaderError(f"prefetch depth must be ≥ 1, got {depth}")
        self.loader = loader
        self._state = loader.state_dict()
        self._queue: "queue.Queue" = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mmbert-prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import queue

        try:
            while not self._stop.is_set():
                item = (self.loader.next_batch(), self.loader.state_dict())
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as e:    # surfaced to the consumer on its next __next__
            self._queue.put((e, None))

    def __iter__(self) -> "Prefetcher":
        return self

    def __next__(self) -> dict[str, Any]:
        if self._stop.is_set():
            raise LoaderError("this Prefetcher is closed; iterate the loader or wrap it again")
        batch, state = self._queue.get()
        if isinstance(batch, BaseException):
            raise batch
        self._state = state
        return batch

    def state_dict(self) -> dict[str, Any]:
        return self._state

    def close(self) -> MLMLoader:
        """Stop the thread and rewind the loader to just after the last consumed batch; returns it."""
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join()
            self.loader.load_state_dict(self._state)
        return self.loader
