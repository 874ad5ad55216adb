"""Chunking and greedy best-fit packing of documents into rows of exactly `seq_len` tokens.

    from mmbert.data.packing import BestFitPacker, chunk_spans, materialize_row, row_layout
    packer = BestFitPacker(seq_len=1024, buffer_size=256)
    for s, e in chunk_spans(len(doc), 1024):          # doc: a 1-D int array without <bos>/<eos>
        packer.add(e - s + 2, (s, e))                 # length with the <bos>/<eos> framing, any JSON-able ref
    refs, lens = packer.pop()                         # one row (pop once packer.full, or to drain)
    input_ids = materialize_row([doc[s:e] for s, e in refs], 1024, bos_id=2, eos_id=1, pad_id=0)
    cu_seqlens, position_ids = row_layout(lens, 1024)
    ids, mask = pad_rows([[2, 7, 1], [2, 1]], pad_id=0)   # the padded layout, for padded consumers

`mmbert.data.loader` runs this online over the shards; tests/packing_ref.py packs a finite list of
documents the same way (the tests' and benchmarks' reference).

Chunking (`chunk_spans`). A row holds whole chunks; each chunk is `<bos> content <eos>`, so a chunk
carries at most C = seq_len - 2 content tokens. A document of L ≤ C tokens is one chunk. A longer
one is cut into k = ceil(L / C) chunks of C tokens plus a tail of r = L - (k-1)·C tokens. If the tail
is shorter than `min_tail` (default C // 4), it is back-filled from the previous chunk: the boundary
between the last two chunks moves back so the tail holds exactly `min_tail` tokens and the previous
chunk C - (min_tail - r). Every content token lands in exactly one chunk ("backfill, no
duplicates" — the alternative, taking the tail as the last C tokens, would repeat up to C - r tokens),
and no chunk is a tiny context-free fragment. The shortened second-to-last chunk leaves a small hole
in its row that the packer fills with a short document.

Packing (`BestFitPacker`). Streaming greedy best fit over a buffer of `buffer_size` chunks: each
row starts with the oldest buffered chunk (bounded waiting: a chunk leaves within `buffer_size`
rows of arriving), then takes, again and again, the longest buffered chunk that fits the space left
(ties: the oldest), until none fits; the rest is padding. The larger the buffer, the more short
chunks are around to fill holes, but the more tokens are in flight between drawing and emitting
(which delays the language mix the loader draws): on the embedded corpus at seq 1024, 99.85% of
tokens are real with the default 256-chunk buffer (benchmarks/results/data_stream_*.md).
Deterministic; a chunk never crosses a row boundary, and documents cross rows only as separate
chunks.

Row layout (`row_layout`). `cu_seqlens` (int32) starts at 0, has one boundary per chunk, and ends at
seq_len: trailing padding, if any, is ITS OWN final segment (so a flash-attn varlen call sees every
token; pad tokens attend only to pad tokens). Its tokens are `pad_id`; the loader gives them label
-100 and the segment language -1 (`doc_lang`). `position_ids` restart at 0 in every segment.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from typing import Any, Sequence

import numpy as np
import torch


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged token rows → right-padded input_ids [B, T] and attention_mask [B, T] (both int64), T the
    longest row: the padded layout every consumer of padded batches uses (fine-tuning collates, MLM
    eval, backbones, ONNX sessions, benchmark peers)."""
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for j, r in enumerate(rows):
        ids[j, :len(r)] = torch.as_tensor(r, dtype=torch.long)
        mask[j, :len(r)] = 1
    return ids, mask


class PackingError(ValueError):
    """Bad packing parameters (sequence too short, chunk longer than a row, …)."""


def _capacity(seq_len: int) -> int:
    if seq_len < 3:
        raise PackingError(f"seq_len must be ≥ 3 to hold <bos> token <eos>, got {seq_len}")
    return seq_len - 2


def default_min_tail(seq_len: int) -> int:
    return max(1, _capacity(seq_len) // 4)


def chunk_spans(length: int, seq_len: int, min_tail: int | None = None) -> list[tuple[int, int]]:
    """Content spans [start, end) of one document's chunks (each later framed by <bos>/<eos>)."""
    c = _capacity(seq_len)
    if length <= 0:
        return []
    if length <= c:
        return [(0, length)]
    mt = default_min_tail(seq_len) if min_tail is None else int(min_tail)
    if not 1 <= mt <= c:
        raise PackingError(f"min_tail must be in [1, {c}] for seq_len {seq_len}, got {min_tail}")
    k = math.ceil(length / c)
    bounds = [i * c for i in range(k)] + [length]
    if length - bounds[-2] < mt:          # tail too short: take the missing tokens from the previous chunk
        bounds[-2] = length - mt
    return [(bounds[i], bounds[i + 1]) for i in range(k)]


class BestFitPacker:
    """Streaming greedy best-fit packer over a buffer of items (chunks; length includes framing).

    `add(length, ref)` buffers one item. `pop()` builds one row: the OLDEST buffered item first (so
    no item waits more than `buffer_size` rows), then repeatedly the LONGEST buffered item that fits
    the remaining space (best fit; ties: oldest), until nothing fits; the rest of the row is padding.
    Pop rows once `full` (buffer holds ≥ `buffer_size` items) to keep enough short items around to
    fill holes; to drain at the end, pop until `len(packer) == 0`. `refs` are opaque
    JSON-able values (the loader uses [lang, doc, start, end]). `state_dict()` / `load_state_dict()`
    capture the buffer exactly, so packing resumes bit for bit.
    """

    def __init__(self, seq_len: int, buffer_size: int = 256):
        if buffer_size < 1:
            raise PackingError(f"buffer_size must be ≥ 1, got {buffer_size}")
        self.seq_len, self.buffer_size = int(seq_len), int(buffer_size)
        self._items: dict[int, tuple[int, Any]] = {}   # seq → (length, ref), insertion ordered
        self._sorted: list[tuple[int, int]] = []       # (length, seq), ascending
        self._fifo: deque[int] = deque()               # seqs in arrival order (lazily pruned)
        self._next = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def full(self) -> bool:
        return len(self._items) >= self.buffer_size

    def add(self, length: int, ref: Any) -> None:
        if not 0 < length <= self.seq_len:
            raise PackingError(f"item of length {length} does not fit a row of {self.seq_len}")
        q = self._next
        self._next += 1
        self._items[q] = (int(length), ref)
        bisect.insort(self._sorted, (int(length), q))
        self._fifo.append(q)

    def _take(self, length: int, q: int) -> tuple[int, Any]:
        del self._sorted[bisect.bisect_left(self._sorted, (length, q))]
        return self._items.pop(q)

    def pop(self) -> tuple[list[Any], list[int]]:
        """Build and return one row as (refs, item lengths) in placement order."""
        while self._fifo and self._fifo[0] not in self._items:
            self._fifo.popleft()
        if not self._fifo:
            raise PackingError("packer is empty; add items before popping a row")
        q = self._fifo.popleft()
        length, ref = self._take(self._items[q][0], q)
        refs, lens, rem = [ref], [length], self.seq_len - length
        while rem > 0 and self._sorted:
            i = bisect.bisect_right(self._sorted, (rem, 1 << 62)) - 1   # longest item ≤ rem
            if i < 0:
                break
            length = self._sorted[i][0]
            q = self._sorted[bisect.bisect_left(self._sorted, (length, -1))][1]   # oldest of that length
            _, ref = self._take(length, q)
            refs.append(ref)
            lens.append(length)
            rem -= length
        return refs, lens

    def state_dict(self) -> dict:
        return {"seq_len": self.seq_len, "buffer_size": self.buffer_size, "next": self._next,
                "items": [[q, n, list(r) if isinstance(r, tuple) else r] for q, (n, r) in self._items.items()]}

    def load_state_dict(self, state: dict) -> None:
        if int(state["seq_len"]) != self.seq_len:
            raise PackingError(f"packer state is for seq_len {state['seq_len']}, not {self.seq_len}")
        self.buffer_size = int(state["buffer_size"])
        self._next = int(state["next"])
        items = sorted((int(q), int(n), r) for q, n, r in state["items"])
        self._items = {q: (n, r) for q, n, r in items}
        self._sorted = sorted((n, q) for q, n, _ in items)
        self._fifo = deque(q for q, _, _ in items)


def row_layout(item_lens: Sequence[int], seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(cu_seqlens int32 [segments+1], position_ids int64 [seq_len]) for one row; trailing padding
    becomes its own last segment (see module docstring)."""
    lens = [int(x) for x in item_lens]
    used = sum(lens)
    if used > seq_len:
        raise PackingError(f"row items sum to {used} > seq_len {seq_len}")
    if used < seq_len:
        lens.append(seq_len - used)
    cu = np.zeros(len(lens) + 1, dtype=np.int32)
    np.cumsum(lens, out=cu[1:])
    pos = np.arange(seq_len, dtype=np.int64) - np.repeat(cu[:-1].astype(np.int64), lens)
    return cu, pos


def materialize_row(chunks: Sequence[np.ndarray], seq_len: int, bos_id: int, eos_id: int,
                    pad_id: int) -> np.ndarray:
    """Concatenate `<bos> chunk <eos>` for each chunk and pad to seq_len (int64)."""
    out = np.full(seq_len, pad_id, dtype=np.int64)
    p = 0
    for c in chunks:
        n = len(c)
        out[p] = bos_id
        out[p + 1:p + 1 + n] = c
        out[p + 1 + n] = eos_id
        p += n + 2
    if p > seq_len:
        raise PackingError(f"chunks need {p} tokens > seq_len {seq_len}")
    return out
