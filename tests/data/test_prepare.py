"""Tiny corpus → tokenizer trained in the test → shards → the shards decode back to the original text;
index counts exact; held-out split fixed; bad input counted; no half-written shards."""

import json

import numpy as np
import pytest

from mmbert.data.prepare import heldout_indices, prepare_shards
from mmbert.data.shards import ShardIndex, open_shard
from mmbert.tokenizer import load_tokenizer, train_tokenizer_from_texts

DOCS = {
    "deu_Latn": [f"Dokument {i}: Alle Menschen sind frei und gleich an Würde und Rechten geboren." for i in range(23)],
    "rus_Cyrl": [f"Документ {i}. Все люди рождаются свободными и равными." for i in range(7)],
    "tha_Thai": ["มนุษย์ทั้งหลายเกิดมามีอิสระ"],
    "jpn_Jpan": ["すべての人間は、生まれながらにして自由である。\n二行目。", "  先頭の空白と 😀 絵文字  "],
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("prep")
    corpus = root / "corpus"
    for lang, docs in DOCS.items():
        (corpus / lang).mkdir(parents=True)
        (corpus / lang / "a.jsonl").write_text(
            "".join(json.dumps({"text": d, "source": "test"}, ensure_ascii=False) + "\n" for d in docs),
            encoding="utf-8")
    (corpus / "deu_Latn" / "broken.txt").write_bytes(b"\xff\xfe kaputt")
    (corpus / "zzz_Latn").mkdir()                   # unknown ISO 639-3 code
    (corpus / "spa_Latn").mkdir()                   # a language folder with nothing usable
    (corpus / "spa_Latn" / "a.jsonl").write_text('{"no_text": 1}\n')
    tok = train_tokenizer_from_texts([d for docs in DOCS.values() for d in docs] * 5, 512)
    tok.save(root / "tok")
    return root, corpus


def test_heldout_indices():
    assert heldout_indices(1) == []
    assert heldout_indices(2, 0.01) == [1]
    assert heldout_indices(1000, 0.01) == list(range(50, 1000, 100))
    assert len(heldout_indices(10**6, 0.01, max_heldout_docs=200)) == 200
    assert heldout_indices(23, 0.1) == [3, 11, 19]


def _check(root, corpus, out):
    tok = load_tokenizer(root / "tok")
    index = ShardIndex.load(out)
    assert index.languages == sorted(DOCS) and index.vocab_size == 512 and index.dtype == np.uint16
    for lang, docs in DOCS.items():
        held = set(heldout_indices(len(docs), 0.1))
        want = {"train": [d for i, d in enumerate(docs) if i not in held],
                "heldout": [d for i, d in enumerate(docs) if i in held]}
        for split, texts in want.items():
            if not texts:
                assert not index.has(lang, split)
                continue
            shard = open_shard(out, lang, split)
            assert [tok.decode(shard[i]) for i in range(len(shard))] == texts
            ids = [tok.encode(t, add_special_tokens=False) for t in texts]
            assert index.docs(lang, split) == len(texts) == len(shard)
            assert index.tokens(lang, split) == sum(map(len, ids)) == shard.num_tokens
            assert all(tok.bos_id not in shard[i] and tok.eos_id not in shard[i] for i in range(len(shard)))


def test_round_trip_and_exact_counts(setup, tmp_path):
    root, corpus = setup
    out = tmp_path / "shards"
    res = prepare_shards(corpus, root / "tok", out, workers=1, heldout_fraction=0.1, progress=False)
    _check(root, corpus, out)
    assert res["skipped"] == {"invalid-utf8": 1, "unknown-language-folder": 1, "bad-jsonl-line": 1,
                              "empty-file": 1, "empty-language": 1}
    # Deterministic: a second run gives identical files.
    first = {p.relative_to(out): p.read_bytes() for p in out.rglob("*.tokens")}
    prepare_shards(corpus, root / "tok", out, workers=1, heldout_fraction=0.1, progress=False)
    assert first == {p.relative_to(out): p.read_bytes() for p in out.rglob("*.tokens")}


@pytest.mark.dist
def test_two_workers_same_result(setup, tmp_path):
    root, corpus = setup
    prepare_shards(corpus, root / "tok", tmp_path / "a", workers=1, heldout_fraction=0.1, progress=False)
    prepare_shards(corpus, root / "tok", tmp_path / "b", workers=2, heldout_fraction=0.1, progress=False)
    _check(root, corpus, tmp_path / "b")
    a = {p.relative_to(tmp_path / "a"): p.read_bytes() for p in (tmp_path / "a").rglob("*.*s")}
    b = {p.relative_to(tmp_path / "b"): p.read_bytes() for p in (tmp_path / "b").rglob("*.*s")}
    assert a == b and len(a) > 0


def test_crash_leaves_no_half_written_shard(setup, tmp_path, monkeypatch):
    root, corpus = setup
    out = tmp_path / "shards"
    import mmbert.tokenizer as T

    def boom(self, texts, add_special_tokens=True):
        raise RuntimeError("disk on fire")
    monkeypatch.setattr(T.Tokenizer, "encode_batch", boom)
    with pytest.raises(RuntimeError):
        prepare_shards(corpus, root / "tok", out, workers=1, progress=False)
    assert not list(out.rglob("*.tokens")) and not list(out.rglob("*.offsets"))
    assert not (out / "index.json").exists()


def test_unknown_language_and_missing_tokenizer(setup, tmp_path):
    root, corpus = setup
    with pytest.raises(KeyError, match="not in corpus"):
        prepare_shards(corpus, root / "tok", tmp_path / "s", languages=["fra_Latn"], progress=False)
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        prepare_shards(corpus, tmp_path / "nope", tmp_path / "s", progress=False)


# ----------------------------------------------------------------------------- streaming prepare
def _old_prepare(corpus_dir, tok, out, heldout_fraction):
    """The previous implementation, kept as the oracle: a language's documents in one list,
    tokenized whole, split by position."""
    from mmbert.corpus.byo import open_corpus
    from mmbert.data.shards import ShardWriter

    corpus = open_corpus(corpus_dir)
    for lang in corpus.languages:
        docs = list(corpus.documents(lang))
        held = set(heldout_indices(len(docs), heldout_fraction))
        if not docs:
            continue
        with ShardWriter(out, lang, "train", "uint16") as tr:
            hw = ShardWriter(out, lang, "heldout", "uint16") if held else None
            for i, ids in enumerate(tok.encode_batch(docs, add_special_tokens=False)):
                (hw if i in held else tr).add(ids)
            if hw:
                hw.close()


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.suffix in (".tokens", ".offsets")}


@pytest.fixture(scope="module")
def big_corpus(setup):
    """Several files per language, long single-line documents with runs of spaces, digits, emoji."""
    root, corpus = setup
    big = root / "big"
    rng = np.random.default_rng(0)
    words = ["Würde", "frei", "12345", "  ", "😀", "gleich", "Rechten", "<mask>", " <mask>", "x" * 30, "\t", "a", "\n"]
    for lang, n_files in (("deu_Latn", 3), ("rus_Cyrl", 2)):
        (big / lang).mkdir(parents=True)
        for f in range(n_files):
            docs = [" ".join(rng.choice(words, size=int(rng.integers(1, 400)))) for _ in range(int(rng.integers(5, 30)))]
            (big / lang / f"{f}.jsonl").write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n"
                                                           for d in docs), encoding="utf-8")
    return root, big


def test_long_documents_cut_before_spaces_give_the_same_ids(setup):
    from mmbert.data.prepare import safe_cut_before, split_document

    root, _ = setup
    tok = load_tokenizer(root / "tok")
    assert safe_cut_before(tok) == " "
    text = "Alle  Menschen 1234 sind😀 frei <mask> und  gleich an Würde und Rechten geboren. " * 40
    pieces = split_document(text, 37, " ")
    assert len(pieces) > 20 and "".join(pieces) == text
    assert [i for p in pieces for i in tok.encode(p, add_special_tokens=False)] == tok.encode(text, add_special_tokens=False)
    assert split_document("ohne_leerzeichen" * 10, 7, " ") == ["ohne_leerzeichen" * 10]  # no cut: whole


def test_streaming_output_identical_to_the_one_list_implementation(big_corpus, tmp_path, monkeypatch):
    """Tiny pieces (every long document cut many times) and tiny copy slices: the shards are byte
    for byte those of tokenizing each language's documents in one list."""
    import mmbert.data.prepare as P

    root, big = big_corpus
    _old_prepare(big, load_tokenizer(root / "tok"), tmp_path / "old", 0.1)
    monkeypatch.setattr(P, "COPY_TOKENS", 50)
    monkeypatch.setattr(P, "BATCH_CHARS", 300)
    prepare_shards(big, root / "tok", tmp_path / "new", workers=1, heldout_fraction=0.1, progress=False,
                   piece_chars=40)
    old, new = _files(tmp_path / "old"), _files(tmp_path / "new")
    assert old == new and len(old) == 8
    assert not list((tmp_path / "new").rglob(".parts"))  # parts removed once a language is split


def test_resume_after_a_kill_redoes_only_what_was_not_finished(big_corpus, tmp_path, monkeypatch):
    import mmbert.data.prepare as P

    root, big = big_corpus
    prepare_shards(big, root / "tok", tmp_path / "clean", workers=1, heldout_fraction=0.1, progress=False)
    real_split, real_tok = P._split_language, P._tokenize_file

    def killed(lang, nfiles, args):  # the kill: after every file was tokenized, while splitting rus_Cyrl
        if lang == "rus_Cyrl":
            raise KeyboardInterrupt
        return real_split(lang, nfiles, args)

    monkeypatch.setattr(P, "_split_language", killed)
    with pytest.raises(KeyboardInterrupt):
        prepare_shards(big, root / "tok", tmp_path / "run", workers=1, heldout_fraction=0.1, progress=False)
    assert (tmp_path / "run" / "deu_Latn" / ".done.json").is_file()
    assert not (tmp_path / "run" / "rus_Cyrl" / ".done.json").exists()
    monkeypatch.setattr(P, "_split_language", real_split)
    encoded = []
    monkeypatch.setattr(P._STATE["tok"].__class__, "encode_batch",
                        lambda self, texts, add_special_tokens=True: encoded.append(len(texts)) or
                        [e.ids for e in self.hf.encode_batch(list(texts), add_special_tokens=add_special_tokens)])
    prepare_shards(big, root / "tok", tmp_path / "run", workers=1, heldout_fraction=0.1, progress=False)
    assert encoded == []  # deu_Latn was done; rus_Cyrl's parts were done: nothing tokenized again
    assert _files(tmp_path / "run") == _files(tmp_path / "clean")


def test_shards_remember_their_tokenizer(setup, tmp_path):
    """A byte copy in the shard directory, its sha256 in index.json; a tokenizer swapped since (same
    vocabulary size) is an error naming both files at pretrain and eval time."""
    from mmbert.data.shards import ShardError, check_tokenizer, sha256_file, shards_tokenizer

    root, corpus = setup
    tok_dir = tmp_path / "tok"
    load_tokenizer(root / "tok").save(tok_dir)
    out = tmp_path / "shards"
    prepare_shards(corpus, tok_dir, out, workers=1, heldout_fraction=0.1, progress=False)
    index = ShardIndex.load(out)
    copy = out / "tokenizer" / "tokenizer.json"
    assert index.tokenizer["copy"] == "tokenizer/tokenizer.json"
    assert sha256_file(copy) == index.tokenizer["sha256"] == sha256_file(tok_dir / "tokenizer.json")
    assert shards_tokenizer(index).vocab_size == 512
    other = train_tokenizer_from_texts(["ganz andere Texte, andere Merges. " * 3] * 20, 512)
    other.save(tok_dir)  # swapped in place after `data prepare`
    with pytest.raises(ShardError, match=rf"{tok_dir / 'tokenizer.json'} .*is not the tokenizer the shards in "
                                         rf".* were made with: {copy} \(their copy\)"):
        shards_tokenizer(index)
    with pytest.raises(ShardError, match="the model's tokenizer"):
        check_tokenizer(index, tok_dir / "tokenizer.json", role="the model's tokenizer")
    check_tokenizer(index, copy)  # the copy itself matches
    import shutil

    shutil.rmtree(tok_dir)  # the original gone: the copy still serves
    assert shards_tokenizer(index).encode("Dokument 1") == load_tokenizer(root / "tok").encode("Dokument 1")
