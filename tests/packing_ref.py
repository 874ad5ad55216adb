"""Pack a finite list of documents into rows, the way the loader does it online: the reference the
packing tests and benchmarks/train_throughput.py check and measure `mmbert.data.packing` with.

    from packing_ref import pack_documents, packing_efficiency
    rows = pack_documents(docs, seq_len=1024, bos_id=2, eos_id=1, pad_id=0)   # docs: 1-D int arrays
    rows[0].input_ids, rows[0].cu_seqlens, rows[0].position_ids, rows[0].doc_ids
    print(packing_efficiency(rows))              # non-pad tokens / all tokens
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Iterable, Sequence

import numpy as np

from mmbert.data.packing import BestFitPacker, chunk_spans, materialize_row, row_layout


@dataclass
class PackedRow:
    """One packed row: input_ids [seq_len], cu_seqlens, position_ids, and per segment the source
    document id (-1 for the padding segment) and content span."""

    input_ids: np.ndarray
    cu_seqlens: np.ndarray
    position_ids: np.ndarray
    doc_ids: list[Hashable]
    spans: list[tuple[int, int]]

    @property
    def num_pad(self) -> int:
        return int(self.cu_seqlens[-1] - self.cu_seqlens[-2]) if self.doc_ids and self.doc_ids[-1] == -1 else 0


def pack_documents(docs: Iterable[np.ndarray], seq_len: int, *, bos_id: int = 2, eos_id: int = 1,
                   pad_id: int = 0, buffer_size: int = 256, min_tail: int | None = None,
                   drain: bool = True) -> list[PackedRow]:
    """Chunk, best-fit pack and materialise a finite list of documents. With `drain` the buffer is
    emptied at the end (the last rows are then less full — a finite-list effect the endless loader
    never sees); without it the leftover chunks are dropped."""
    docs = [np.asarray(d) for d in docs]
    packer = BestFitPacker(seq_len, buffer_size)
    rows: list[PackedRow] = []

    def emit(until: int):
        while len(packer) > until:
            refs, lens = packer.pop()
            chunks = [docs[d][s:e] for d, s, e in refs]
            cu, pos = row_layout(lens, seq_len)
            ids = materialize_row(chunks, seq_len, bos_id, eos_id, pad_id)
            pad = [-1] if len(cu) - 1 > len(lens) else []
            rows.append(PackedRow(ids, cu, pos, [d for d, _, _ in refs] + pad,
                                  [(s, e) for _, s, e in refs] + ([(0, 0)] if pad else [])))

    for i, d in enumerate(docs):
        for s, e in chunk_spans(len(d), seq_len, min_tail):
            packer.add(e - s + 2, (i, s, e))
        emit(packer.buffer_size - 1)
    if drain:
        emit(0)
    return rows


def packing_efficiency(rows: Sequence[PackedRow]) -> float:
    """Non-pad tokens / all tokens over the rows (bos/eos count as non-pad)."""
    total = sum(len(r.input_ids) for r in rows)
    return 1.0 - sum(r.num_pad for r in rows) / total if total else 0.0
