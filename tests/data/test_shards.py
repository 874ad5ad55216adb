"""Shard format: round trip, atomicity, and one clear error per kind of corruption."""

import json

import numpy as np
import pytest

from mmbert.data.shards import (ShardError, ShardIndex, ShardNotFoundError, ShardWriter,
                                open_shard, write_index)


def _write(root, lang="deu_Latn", docs=((5, 6, 7), (8,), (9, 10)), dtype="uint16", vocab=100):
    with ShardWriter(root, lang, "train", dtype) as w:
        for d in docs:
            w.add(np.array(d))
    write_index(root, {lang: {"train": w.counts}}, dtype, vocab, {"name": "test"})
    return w


@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
def test_round_trip(tmp_path, dtype):
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 60000, size=int(rng.integers(1, 50))) for _ in range(20)]
    w = _write(tmp_path, docs=docs, dtype=dtype, vocab=60000)
    assert w.counts == {"tokens": sum(len(d) for d in docs), "docs": 20}
    idx = ShardIndex.load(tmp_path)
    assert idx.languages == ["deu_Latn"] and idx.dtype == np.dtype(dtype) and idx.vocab_size == 60000
    assert idx.tokens("deu_Latn") == w.tokens and idx.docs("deu_Latn") == 20
    assert idx.tokenizer == {"name": "test"}
    s = open_shard(tmp_path, "deu_Latn")
    assert len(s) == 20 and s.num_tokens == w.tokens
    for i, d in enumerate(docs):
        np.testing.assert_array_equal(s[i], d)
    np.testing.assert_array_equal(s.doc_lengths, [len(d) for d in docs])
    np.testing.assert_array_equal(s[-1], docs[-1])
    with pytest.raises(IndexError):
        s[20]


def test_empty_docs_skipped_and_bad_ids_rejected(tmp_path):
    with ShardWriter(tmp_path, "fra_Latn", "train", "uint16") as w:
        assert w.add(np.array([], dtype=np.int64)) is False
        assert w.add([1, 2]) is True
        with pytest.raises(ShardError, match="uint32"):
            w.add(np.array([70000]))
        with pytest.raises(ShardError, match="out of range"):
            w.add(np.array([-1]))
        with pytest.raises(ShardError, match="1-D"):
            w.add(np.zeros((2, 2), dtype=np.int64))
    assert w.counts == {"tokens": 2, "docs": 1}


def test_writer_is_atomic_on_error(tmp_path):
    _write(tmp_path, docs=[(1, 2, 3)])
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path, "deu_Latn", "train", "uint16") as w:
            w.add([4, 5])
            raise RuntimeError("boom")
    # the previous shard is intact and no temp files are left behind
    np.testing.assert_array_equal(open_shard(tmp_path, "deu_Latn")[0], [1, 2, 3])
    assert sorted(p.name for p in (tmp_path / "deu_Latn").iterdir()) == ["train.offsets", "train.tokens"]


def test_errors(tmp_path):
    with pytest.raises(ShardNotFoundError, match="no shard index"):
        ShardIndex.load(tmp_path)
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(ShardError, match="corrupt shard index"):
        ShardIndex.load(tmp_path)
    (tmp_path / "index.json").write_text(json.dumps({"format": "other/1"}))
    with pytest.raises(ShardError, match="format"):
        ShardIndex.load(tmp_path)
    _write(tmp_path)
    with pytest.raises(ShardNotFoundError, match="available: deu_Latn"):
        open_shard(tmp_path, "xxx_Latn")
    with pytest.raises(ShardNotFoundError, match="heldout"):
        open_shard(tmp_path, "deu_Latn", "heldout")
    # truncated tokens file: offsets no longer match
    tok = tmp_path / "deu_Latn" / "train.tokens"
    tok.write_bytes(tok.read_bytes()[:-2])
    with pytest.raises(ShardError, match="offsets"):
        open_shard(tmp_path, "deu_Latn")
    # tokens and offsets agree but the index disagrees
    _write(tmp_path)
    idx = json.loads((tmp_path / "index.json").read_text())
    idx["languages"]["deu_Latn"]["train"]["docs"] = 7
    (tmp_path / "index.json").write_text(json.dumps(idx))
    with pytest.raises(ShardError, match="index.json says"):
        open_shard(tmp_path, "deu_Latn")
    with pytest.raises(ShardError, match="dtype"):
        ShardWriter(tmp_path, "deu_Latn", "train", "int8")
    with pytest.raises(ShardError, match="split"):
        ShardWriter(tmp_path, "deu_Latn", "dev", "uint16")


def test_empty_shard_opens(tmp_path):
    with ShardWriter(tmp_path, "nld_Latn", "heldout", "uint16") as w:
        pass
    write_index(tmp_path, {"nld_Latn": {"heldout": w.counts}}, "uint16", 10)
    s = open_shard(tmp_path, "nld_Latn", "heldout")
    assert len(s) == 0 and s.num_tokens == 0


def test_small_files_read_large_files_mapped(tmp_path, monkeypatch):
    import mmbert.data.shards as shards

    _write(tmp_path)
    assert not isinstance(open_shard(tmp_path, "deu_Latn").tokens, np.memmap)   # tiny: in memory, no fd held
    monkeypatch.setattr(shards, "SMALL_FILE_BYTES", 0)
    s = open_shard(tmp_path, "deu_Latn")
    assert isinstance(s.tokens, np.memmap) and isinstance(s.offsets, np.memmap)
    np.testing.assert_array_equal(s[0], [5, 6, 7])
