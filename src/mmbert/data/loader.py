"""The training data stream: language sampling → chunking → best-fit packing → MLM masking → batches.

    from mmbert.data.loader import LoaderSpec, MLMLoader, StreamPhase
    loader = MLMLoader("out/shards", StreamPhase(languages="top:60", temperature=0.7, mask_rate=0.3,
                       seq_len=1024), LoaderSpec(seed=0, rows_per_batch=64, lanes=8))
                                    # rank / world_size from torch.distributed (keywords to override)
    batch = next(loader)            # or loader.next_batch(rows) — rows = GLOBAL rows (batch warm-up)
    loss = model(input_ids=batch["input_ids"], cu_seqlens=batch["cu_seqlens"],
                 max_seqlen=batch["max_seqlen"], position_ids=batch["position_ids"],
                 labels=batch["labels"]).loss
    state = gather_state(loader.state_dict())   # JSON-able; every rank calls it (a collective)
    MLMLoader("out/shards", spec=LoaderSpec(seed=0, ...)).load_state_dict(state)   # any rank, any W
    loader.set_phase(StreamPhase(languages="top:110", temperature=0.5, mask_rate=0.15, seq_len=8192))
    # batch-size warm-up: ask for the GLOBAL rows the schedule wants at this point of the phase
    batch = loader.next_batch(batch_rows_at(phase, tokens_into_phase, granularity=world_size))  # mmbert.train.schedules

`StreamPhase` holds what a phase sets, `LoaderSpec` what stays fixed for the stream's life; their
fields' defaults are the loader's defaults (`mmbert.train` maps a recipe Phase onto a StreamPhase).

The stream (all deterministic functions of `seed` and `lanes`):
0. Lanes. The stream is `lanes` independent packing streams ("lanes"), each with its own language
   draws, document cursors and packer. Global batch of R rows = R/lanes rows from each lane, lane
   by lane (lane 0's rows first). A language's documents are split between lanes by position: lane k
   of K takes positions k, k+K, k+2K, … of that language's endless sequence of epoch permutations.
   With one lane this is a single global stream; with lanes = world size each rank packs only its
   own lane — the packing (~0.5 ms per row on a 460-language corpus) then costs each rank R/W rows
   per step instead of R. The lane count is fixed for a run (it is in the state); the rank count is not.
1. Language draws. A phase's languages get p_ℓ ∝ w_ℓ·n_ℓ^τ (`mmbert.data.sampling`, optional epoch cap).
   A lane's next CHUNK comes from the language furthest behind its token share: argmax_ℓ (p_ℓ·T − t_ℓ),
   with t_ℓ the content tokens the lane drew from ℓ in this phase and T = Σ t_ℓ (stratified sampling); a
   language finishes its open document chunk by chunk before starting the next. So the token shares
   equal p at every point of the run, within one chunk per language and lane (for what is drawn; the
   packer's buffer of `buffer_size` chunks delays what is emitted), like mmBERT's released mixtures, which
   fix each language's token count per phase. (Independent random draws per
   document match p only in expectation: on the embedded corpus, whose documents run from a few to
   ~100k tokens, they were still 9% off in total variation after 2M tokens and 2% after 40M.)
2. Documents. Each language walks through a random permutation of its `train` documents (the `heldout`
   split is never read), a fresh one per epoch (`default_rng([seed, crc32(lang), epoch])`); a
   language's position carries over phase boundaries. `epochs_seen()` reports the repetition.
3. Chunking and packing (`mmbert.data.packing`): each document becomes `<bos> … <eos>` chunks
   (back-filled tails) that a streaming greedy best-fit packer puts into rows of exactly seq_len.
4. Masking (`mmbert.data.masking.apply_mask`, 80/10/10, specials never selected) with a numpy
   generator seeded by the row's place in its lane — (seed, global row index) with one lane, (seed,
   lane row index, lane, lanes) with several — so a row's mask does not depend on batch sizes or the
   world size. The loader does its per-row work in numpy (single-threaded) rather than torch, whose
   intra-op thread pool belongs to the training step (on a busy 2-core box, small torch ops
   contending for it were 50× slower).

`next_batch(rows)` takes the next `rows` global rows. Rank r of W materialises its contiguous share,
global rows [start + r·rows/W, start + (r+1)·rows/W), and packs only the lanes that share overlaps
(`held_lanes`): K/W lanes each when W divides K, one lane shared by W/K ranks when K divides W; with
K = 1 every rank packs the single lane (the stream of earlier versions, bit for bit).

Guarantees:
- Determinism: same arguments + same sequence of `next_batch`/`set_phase` calls → same batches,
  bit for bit, on any machine (numpy PCG64 streams only; no threads involved).
- Resume: `state_dict()` after batch k, loaded into a fresh loader built on the same shards and seed,
  yields exactly batches k+1, k+2, … of the uninterrupted run (state includes the phase parameters
  and the lane count, so a restored loader is also in the right phase). A rank's `state_dict()` holds
  the lanes it packs (null for the others); `gather_state` (every rank calls it) or `merge_states`
  makes the complete state, which does not depend on rank or world size: save it from rank 0, load
  it everywhere — even with a new W (rows per batch must then be multiples of lcm(lanes, W)).
- Distributed: for a global batch of R rows (R a multiple of lanes and W), the union over ranks of the
  W local batches is exactly the single-process (W = 1) batch of R rows of a loader with the same
  lanes: the same rows, the same masks, in rank order. Ranks never share a row.
Phase switch (`set_phase`): a change of languages/τ/weights/seq_len rebuilds the sampler; chunks
already buffered in a packer carry over when their language stays active and they fit the new
seq_len, the others are dropped (their documents count as drawn); a language's document in
progress continues, chunked for the new seq_len, when that language is next drawn in that lane. A
change of mask rate alone takes effect from the next row and leaves the stream untouched.

Batch dict (rank-local, R_local rows of seq_len, N = R_local·seq_len, D = segments):
  input_ids, labels (-100 = not a target), position_ids: int64 [N]; cu_seqlens: int32 [D+1] with
  per-row offsets (trailing padding of a row is its own segment); max_seqlen: int; doc_lang: int64 [D]
  index into `languages` (all shard languages, sorted; -1 = padding segment); languages: list[str];
  num_masked, num_tokens (non-pad), rows, seq_len, first_row (global index): int. Per-token
  language, e.g. for per-language losses: `doc_lang.repeat_interleave(cu_seqlens.diff())`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import zlib
from dataclasses import dataclass, field
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

STATE_VERSION = 2
DEFAULT_SPECIAL_IDS = tuple(range(len(SPECIAL_TOKENS)))  # mmBERT's: pad, eos/sep, bos/cls, unk, mask
_MMBERT_IDS = {"pad_id": PAD_ID, "eos_id": EOS_ID, "bos_id": BOS_ID, "unk_id": UNK_ID, "mask_id": MASK_ID}


class LoaderError(ValueError):
    """Bad loader arguments or a state that does not match them."""


@dataclass(frozen=True)
class StreamPhase:
    """What a phase sets in the stream (`MLMLoader.set_phase`).

      languages: "all" | "top:K" | "min:X" | names (`mmbert.data.sampling.select_languages`).
      temperature: τ in p_ℓ ∝ w_ℓ·n_ℓ^τ (> 0).  mask_rate: in (0, 1).  seq_len: row length (≥ 3).
      language_weights: extra factor w_ℓ on p_ℓ (renormalised), e.g. {"eng_Latn": 4.0}.
      token_budget, epoch_cap: planned tokens for the phase and an optional cap on epochs per language
        (excess redistributed, `mmbert.data.sampling.cap_epochs`); the budget also fills the plan table.
      shares: fixed token fractions per source (`mmbert.data.sampling.plan_phase`).
    Budget, cap, weights and shares belong to one phase: a new StreamPhase without them has none.
    """

    languages: str | tuple[str, ...] = "all"
    temperature: float = 0.7
    mask_rate: float = 0.3
    seq_len: int = 1024
    language_weights: Mapping[str, float] = field(default_factory=dict)
    token_budget: float | None = None
    epoch_cap: float | None = None
    shares: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:  # one spelling per value, so equal phases compare equal
        if not isinstance(self.languages, str):
            object.__setattr__(self, "languages", tuple(self.languages))
        object.__setattr__(self, "temperature", float(self.temperature))
        object.__setattr__(self, "seq_len", int(self.seq_len))
        object.__setattr__(self, "language_weights", dict(self.language_weights or {}))
        object.__setattr__(self, "shares", dict(self.shares or {}))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["languages"] = self.languages if isinstance(self.languages, str) else list(self.languages)
        return d


@dataclass(frozen=True)
class LoaderSpec:
    """What stays fixed for the stream's life.

      seed: stream seed.  rows_per_batch: default GLOBAL rows per `next(loader)`.
      lanes: independent packing lanes (module docstring): 1 = one global stream that every rank
        packs whole; the world size = each rank packs only its own rows. A stream property: the
        rows depend on it (not on rank or world size); a restored state brings its own.
      buffer_size: packer buffer in chunks, per lane. Bigger = fuller rows but more tokens in flight,
        which delays the language shares (on the embedded corpus at seq 1024: 256 → 99.92% real
        tokens and shares within 1.2% total variation of p after 2,000 rows; 4096 → 99.98% but 4.7%).
      min_tail: chunk tail rule (`mmbert.data.packing.chunk_spans`).
      bos_id, eos_id, pad_id, mask_id: default to index.json's tokenizer info (`*_id` keys), else
        mmBERT's 2, 1, 0, 4.  special_ids: never masked; default {0..4} ∪ those ids ∪ unk_id ∪
        tokenizer.special_ids.  vocab_size: default from index.json.
    """

    seed: int = 0
    rows_per_batch: int = 8
    lanes: int = 1
    buffer_size: int = 256
    min_tail: int | None = None
    bos_id: int | None = None
    eos_id: int | None = None
    pad_id: int | None = None
    mask_id: int | None = None
    special_ids: tuple[int, ...] | None = None
    vocab_size: int | None = None

    def __post_init__(self) -> None:
        if int(self.lanes) < 1:
            raise LoaderError(f"lanes must be ≥ 1, got {self.lanes}")
        if int(self.buffer_size) < 1:
            raise PackingError(f"buffer_size must be ≥ 1, got {self.buffer_size}")
        if self.special_ids is not None:
            object.__setattr__(self, "special_ids", tuple(int(x) for x in self.special_ids))


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


def held_lanes(lanes: int, rank: int, world_size: int) -> range:
    """The lanes rank `rank` of `world_size` packs: those whose rows overlap its share of every batch
    (lane k owns the fraction [k/K, (k+1)/K) of a batch, rank r [r/W, (r+1)/W))."""
    return range(rank * lanes // world_size, -(-(rank + 1) * lanes // world_size))


@dataclass
class _Lane:
    """One independent packing stream: its own language draws, document cursors, open documents
    and packer (module docstring, step 0)."""

    index: int
    packer: BestFitPacker | None = None
    drawn: np.ndarray | None = None                  # content tokens per active language, this phase
    cursors: dict[str, int] = field(default_factory=dict)   # lang → documents this lane has started
    open_docs: dict[str, list[int]] = field(default_factory=dict)   # lang → [doc, next token]

    def state(self) -> dict[str, Any]:
        return {"drawn": self.drawn.tolist(), "cursors": dict(self.cursors),
                "open_docs": {k: list(v) for k, v in self.open_docs.items()}, "packer": self.packer.state_dict()}


class MLMLoader:
    """Deterministic, resumable, rank-aware packed MLM batches from token shards (module docstring).

    shards: folder with index.json (`mmbert.data.shards`). phase: the first phase's stream
    parameters (`StreamPhase`). spec: the fixed ones (`LoaderSpec`). rank / world_size: default
    from torch.distributed, else 0 / 1.
    """

    def __init__(self, shards: str | os.PathLike, phase: StreamPhase | None = None,
                 spec: LoaderSpec | None = None, *, rank: int | None = None, world_size: int | None = None):
        phase, spec = phase or StreamPhase(), spec or LoaderSpec()
        self.spec = spec
        self.index = ShardIndex.load(shards)
        self.root = self.index.root
        self.all_languages = self.index.languages
        self._lang_pos = {l: i for i, l in enumerate(self.all_languages)}
        d_rank, d_world = _dist_rank_world()
        self.rank = d_rank if rank is None else int(rank)
        self.world_size = d_world if world_size is None else int(world_size)
        if not 0 <= self.rank < self.world_size:
            raise LoaderError(f"rank {self.rank} is outside world_size {self.world_size}")
        self.seed = int(spec.seed)
        tok = self.index.tokenizer if isinstance(self.index.tokenizer, dict) else {}
        # given ids, else the tokenizer info `mmbert data prepare` wrote, else mmBERT's (synthetic shards)
        ids = resolve_special_ids(None, tok, _MMBERT_IDS, pad=spec.pad_id, cls=spec.bos_id, sep=spec.eos_id,
                                  mask=spec.mask_id)
        self.bos_id, self.eos_id, self.pad_id, self.mask_id = ids.cls, ids.sep, ids.pad, ids.mask
        self.vocab_size = int(spec.vocab_size or self.index.vocab_size)
        specials = set(DEFAULT_SPECIAL_IDS if spec.special_ids is None else spec.special_ids)
        specials |= {int(x) for x in tok.get("special_ids", [])}
        specials |= {self.bos_id, self.eos_id, self.pad_id, self.mask_id}
        if isinstance(tok.get("unk_id"), int):
            specials.add(tok["unk_id"])
        if max(specials) >= self.vocab_size or min(specials) < 0:
            raise LoaderError(f"special ids {sorted(specials)} must lie in [0, vocab_size={self.vocab_size})")
        self._is_special, self._allowed = special_table(sorted(specials), self.vocab_size, self.mask_id)
        self.buffer_size, self.min_tail = int(spec.buffer_size), spec.min_tail
        self._set_lanes(int(spec.lanes))
        self.rows_per_batch = self._check_rows(spec.rows_per_batch)
        self._shards: dict[str, Shard] = {}
        self._perms: dict[str, dict[int, np.ndarray]] = {}
        self.rows_emitted = 0                         # global rows handed out so far (all phases)
        self.tokens_seen = 0                          # global rows × their seq_len
        self.phase_index = -1
        self.phase: StreamPhase | None = None
        self.plan: SamplingPlan | None = None
        self.set_phase(phase)

    def _set_lanes(self, lanes: int) -> None:
        self.lanes = lanes
        self.held = held_lanes(lanes, self.rank, self.world_size)
        self._lane: list[_Lane | None] = [_Lane(k) if k in self.held else None for k in range(lanes)]

    @property
    def row_multiple(self) -> int:
        """Every batch's global rows must be a multiple of this: lcm(lanes, world_size)."""
        return self.lanes * self.world_size // math.gcd(self.lanes, self.world_size)

    # ------------------------------------------------------------------ phase parameters
    def _check_rows(self, rows: int) -> int:
        rows, m = int(rows), self.row_multiple
        if rows < 1 or rows % m:
            lanes = f" and of the stream's lanes ({self.lanes})" if self.lanes > 1 else ""
            raise LoaderError(f"rows per batch ({rows}) must be a positive multiple of world_size "
                              f"({self.world_size}){lanes}; each rank takes rows/world_size rows")
        return rows

    def set_phase(self, phase: StreamPhase) -> SamplingPlan:
        """Switch to `phase` (call at a phase boundary, on every rank, at the same stream position).
        Validates everything before changing anything."""
        check_mask_rate(phase.mask_rate)
        if phase.seq_len < 3:
            raise PackingError(f"seq_len must be ≥ 3 to hold <bos> token <eos>, got {phase.seq_len}")
        if self.min_tail is not None and not 1 <= self.min_tail <= phase.seq_len - 2:
            raise PackingError(f"min_tail {self.min_tail} must be in [1, seq_len - 2 = {phase.seq_len - 2}]")
        counts = {l: self.index.tokens(l) if self.index.has(l) else 0 for l in self.all_languages}
        spec = phase.languages if isinstance(phase.languages, str) else list(phase.languages)
        plan = plan_phase(counts, spec, phase.temperature, budget=phase.token_budget, epoch_cap=phase.epoch_cap,
                          name=f"phase {self.phase_index + 1}", weights=phase.language_weights, shares=phase.shares)
        _ensure_open_files(sum(2 for l in plan.languages if l not in self._shards) + len(self._shards) * 2)
        for l in plan.languages:                      # open (and validate) every shard up front
            if l not in self._shards:
                self._shards[l] = open_shard(self.root, l, "train", index=self.index)
            if len(self._shards[l]) == 0:
                raise SamplingError(f"language {l} has no training documents; drop it from the phase")
        old, old_plan = self.phase, self.plan
        stream_changed = (old is None or old_plan.languages != plan.languages or old.temperature != phase.temperature
                          or old.seq_len != phase.seq_len or old_plan.probs != plan.probs)
        self.phase, self.plan = phase, plan
        if stream_changed:
            self.phase_index += 1
            self.plan.name = f"phase {self.phase_index}"
            self._p = np.asarray(plan.probs, dtype=np.float64)
            active = {self._lang_pos[l] for l in plan.languages}
            for lane in self._lane:
                if lane is None:
                    continue
                carried, lane.packer = lane.packer, BestFitPacker(phase.seq_len, self.buffer_size)
                if carried is not None:               # carry buffered chunks that still apply
                    for n, ref in carried._items.values():
                        if ref[0] in active and n <= phase.seq_len:
                            lane.packer.add(n, ref)
                lane.drawn = np.zeros(len(plan.languages), dtype=np.int64)
        else:
            self.plan.name = old_plan.name
        return plan

    def _perm(self, lang: str, epoch: int) -> np.ndarray:
        cache = self._perms.setdefault(lang, {})     # the epochs the lanes are in (at most two apart)
        if epoch not in cache:
            n = len(self._shards[lang])
            cache[epoch] = np.random.default_rng([self.seed, zlib.crc32(lang.encode()), epoch]).permutation(n)
            for e in [e for e in cache if e < epoch - 1]:
                del cache[e]
        return cache[epoch]

    def _next_chunk(self, lane: _Lane) -> tuple[int, int, int, int]:
        """One chunk [lang index, doc, start, end] for `lane` from the language furthest behind its
        token share p_ℓ·T (ties: first by name). A language continues its open document before
        starting the lane's next one, so a long document's chunks interleave with other languages."""
        i = int(np.argmax(self._p * float(lane.drawn.sum()) - lane.drawn))
        lang = self.plan.languages[i]
        sh = self._shards[lang]
        if lang in lane.open_docs:
            doc, start = lane.open_docs.pop(lang)
        else:       # lane k takes positions k, k+K, … of the language's endless epoch permutations
            c = lane.cursors.get(lang, 0)
            pos, n = lane.index + c * self.lanes, len(sh)
            doc, start = int(self._perm(lang, pos // n)[pos % n]), 0
            lane.cursors[lang] = c + 1
        length = int(sh.offsets[doc + 1] - sh.offsets[doc])
        # the rest of the document chunks exactly like the whole would (only its tail is adjusted)
        spans = chunk_spans(length - start, self.phase.seq_len, self.min_tail)
        s, e = start + spans[0][0], start + spans[0][1]
        if e < length:
            lane.open_docs[lang] = [doc, e]
        lane.drawn[i] += e - s
        return self._lang_pos[lang], doc, s, e

    def _next_row_refs(self, lane: _Lane) -> tuple[list, list[int]]:
        while not lane.packer.full:
            li, doc, s, e = self._next_chunk(lane)
            lane.packer.add(e - s + 2, [li, doc, s, e])
        return lane.packer.pop()

    def _materialize(self, refs: list, lens: list[int], mask_key: list[int]) -> dict[str, Any]:
        seq_len = self.phase.seq_len
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
        inputs, labels = apply_mask(ids, self.phase.mask_rate, self._is_special, self._allowed,
                                    self.mask_id, np.random.default_rng(mask_key))
        doc_lang = [li for li, _, _, _ in refs] + ([-1] if len(cu) - 1 > len(refs) else [])
        return {"input_ids": inputs, "labels": labels, "position_ids": pos,
                "cu_seqlens": cu, "doc_lang": doc_lang, "num_pad": seq_len - sum(lens)}

    def next_batch(self, rows: int | None = None) -> dict[str, Any]:
        """The next `rows` GLOBAL rows of the stream (default `rows_per_batch`); returns this rank's
        contiguous share of rows/world_size rows as one packed batch dict (module docstring). Packs
        only the lanes that share overlaps."""
        rows = self.rows_per_batch if rows is None else self._check_rows(rows)
        per_rank, per_lane = rows // self.world_size, rows // self.lanes
        first = self.rows_emitted
        lo = first + self.rank * per_rank
        out = []
        for k in self.held:
            lane = self._lane[k]
            for i in range(per_lane):
                refs, lens = self._next_row_refs(lane)
                row = first + k * per_lane + i
                if lo <= row < lo + per_rank:
                    # the mask depends only on the row's place in its lane: not on batch sizes or ranks
                    key = [self.seed, row] if self.lanes == 1 else [self.seed, first // self.lanes + i, k, self.lanes]
                    out.append(self._materialize(refs, lens, key))
        self.rows_emitted += rows
        self.tokens_seen += rows * self.phase.seq_len
        return self._collate(out, lo)

    def _collate(self, rows: list[dict[str, Any]], first_row: int) -> dict[str, Any]:
        seq_len = self.phase.seq_len
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
        """Documents drawn per language, in epochs of that language's data (all phases so far), over
        the lanes this loader packs (all of them in one process)."""
        started: dict[str, int] = {}
        for lane in self._lane:
            for l, c in (lane.cursors if lane else {}).items():
                started[l] = started.get(l, 0) + c
        return {l: c / len(self._shards[l]) for l, c in sorted(started.items())}

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        """Plain JSON-able state (ints, floats, strings, lists, dicts). `lane_states` holds the
        lanes this rank packs and null for the others: complete on one process or with one lane,
        else `gather_state` / `merge_states` complete it."""
        return {"version": STATE_VERSION, "seed": self.seed, "shard_languages": self.all_languages,
                "lanes": self.lanes, "phase": self.phase.to_dict(),
                "plan": {"languages": self.plan.languages, "probs": self.plan.probs},
                "phase_index": self.phase_index, "rows_emitted": self.rows_emitted,
                "tokens_seen": self.tokens_seen,
                "lane_states": [lane.state() if lane else None for lane in self._lane]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state (`state_dict()` of any rank whose lanes cover this rank's, or a complete
        state from `merge_states`, of any world size) into a loader built on the same shards and
        seed; the phase parameters and the lane count come from the state."""
        if state.get("version") == 1:
            state = self._from_v1(state)
        if state.get("version") != STATE_VERSION:
            raise LoaderError(f"loader state version {state.get('version')!r} is not {STATE_VERSION}; "
                              f"it was written by another mmbert version")
        if int(state["seed"]) != self.seed or list(state["shard_languages"]) != self.all_languages:
            raise LoaderError("loader state was saved with a different seed or shard set; build the loader "
                              f"with seed={state['seed']} on the same shards to resume")
        lanes = int(state["lanes"])
        need = held_lanes(lanes, self.rank, self.world_size)
        missing = [k for k in need if state["lane_states"][k] is None]
        if len(state["lane_states"]) != lanes or missing:
            raise LoaderError(f"the loader state lacks lanes {missing} that rank {self.rank} of {self.world_size} "
                              f"packs; save the complete state (gather_state on every rank) to resume")
        self._set_lanes(lanes)
        self.phase = self.plan = None
        self.set_phase(StreamPhase(**state["phase"]))
        if self.plan.probs != state["plan"]["probs"] or self.plan.languages != state["plan"]["languages"]:
            raise LoaderError("the shards' token counts changed since the state was saved; resume on the same shards")
        self.phase_index = int(state["phase_index"])
        self.plan.name = f"phase {self.phase_index}"
        self.rows_emitted, self.tokens_seen = int(state["rows_emitted"]), int(state["tokens_seen"])
        for k in self.held:
            ls, lane = state["lane_states"][k], self._lane[k]
            lane.drawn = np.asarray(ls["drawn"], dtype=np.int64)
            lane.cursors = {l: int(c) for l, c in ls["cursors"].items()}
            lane.open_docs = {l: [int(d), int(t)] for l, (d, t) in ls["open_docs"].items()}
            lane.packer = BestFitPacker(self.phase.seq_len, self.buffer_size)
            lane.packer.load_state_dict(ls["packer"])


    def _from_v1(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """A version-1 state (before lanes: one global stream, cursors as [epoch, position]) as the
        one-lane version-2 state it equals, so runs checkpointed before resume unchanged."""
        ph = state["phase"]
        n = {l: self.index.docs(l) for l in state["cursors"]}
        lane = {"drawn": state["drawn"], "open_docs": state["open_docs"], "packer": state["packer"],
                "cursors": {l: int(e) * n[l] + int(p) for l, (e, p) in state["cursors"].items()}}
        phase = StreamPhase(languages=ph["languages_spec"], temperature=ph["tau"], mask_rate=ph["mask_rate"],
                            seq_len=ph["seq_len"], language_weights=ph["weights"], token_budget=ph["budget"],
                            epoch_cap=ph["epoch_cap"], shares=ph.get("shares") or {})
        return {"version": 2, "seed": state["seed"], "shard_languages": state["shard_languages"], "lanes": 1,
                "phase": phase.to_dict(), "plan": {"languages": ph["languages"], "probs": ph["probs"]},
                "phase_index": state["phase_index"], "rows_emitted": state["rows_emitted"],
                "tokens_seen": state["tokens_seen"], "lane_states": [lane]}


def merge_states(states: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The complete loader state from every rank's `state_dict()` (each holds the lanes it packs)."""
    shared = [{k: v for k, v in s.items() if k != "lane_states"} for s in states]
    if any(s != shared[0] for s in shared[1:]):
        raise LoaderError("the ranks' loader states disagree outside their lanes (ranks out of step: "
                          "every rank must make the same next_batch/set_phase calls)")
    lanes: list[Any] = [None] * int(shared[0]["lanes"])
    for s in states:
        for k, ls in enumerate(s["lane_states"]):
            if lanes[k] is None:
                lanes[k] = ls
    if any(ls is None for ls in lanes):
        raise LoaderError(f"no rank holds lanes {[k for k, ls in enumerate(lanes) if ls is None]}")
    return {**shared[0], "lane_states": lanes}


def gather_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """The complete state from this rank's `state_dict()`: under torch.distributed every rank must
    call it (an all-gather of the small JSON states); a state that is already complete is returned
    as is, without communication."""
    # decided alike on every rank (a rank may hold every lane while its peers do not)
    dist = torch.distributed.is_available() and torch.distributed.is_initialized()
    if int(state["lanes"]) == 1 or not dist or torch.distributed.get_world_size() == 1:
        if any(ls is None for ls in state["lane_states"]):
            raise LoaderError("this loader state holds only some lanes and no process group is running to "
                              "gather the others")
        return dict(state)
    states: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(states, dict(state))
    return merge_states(states)

