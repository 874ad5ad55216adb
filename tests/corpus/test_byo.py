"""Bring-your-own corpus: the three file kinds, bad input skipped and counted, HF `datasets` import
from a local parquet file (no hub)."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmbert.corpus.byo import import_hf_dataset, open_corpus


def _write_jsonl(path, docs):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": d, "source": "t"}, ensure_ascii=False) + "\n" for d in docs),
                    encoding="utf-8")


def test_reads_jsonl_txt_parquet_in_order(tmp_path):
    _write_jsonl(tmp_path / "deu_Latn" / "a.jsonl", ["Erstes Dokument.", "Zweites Dokument."])
    (tmp_path / "deu_Latn" / "b.txt").write_text("Drittes\nDokument.\n\n\nViertes Dokument.\n", encoding="utf-8")
    pq.write_table(pa.table({"text": ["Первый документ.", "Второй документ."], "id": [1, 2]}),
                   tmp_path / "rus_Cyrl" / "x.parquet") if (tmp_path / "rus_Cyrl").mkdir() is None else None
    c = open_corpus(tmp_path)
    assert c.languages == ["deu_Latn", "rus_Cyrl"]
    assert list(c.documents("deu_Latn")) == ["Erstes Dokument.", "Zweites Dokument.", "Drittes\nDokument.",
                                             "Viertes Dokument."]
    assert list(c.documents("rus_Cyrl")) == ["Первый документ.", "Второй документ."]
    assert not c.skipped


def test_bad_input_is_skipped_and_counted(tmp_path):
    good = tmp_path / "fra_Latn"
    _write_jsonl(good / "ok.jsonl", ["Un document valide."])
    (good / "latin1.txt").write_bytes("Un texte en Latin-1 : été".encode("latin-1"))
    (good / "binary.txt").write_bytes(b"\x7fELF\x00\x01\x02\x00" * 10)
    (good / "empty.jsonl").write_bytes(b"")
    (good / "bad.jsonl").write_text('{"text": "Encore un document."}\nnot json\n{"no_text": 1}\n', encoding="utf-8")
    (good / "notes.docx").write_bytes(b"PK")
    pq.write_table(pa.table({"content": ["pas de colonne text"]}), good / "wrong.parquet")
    (good / "broken.parquet").write_bytes(b"not a parquet file")
    (tmp_path / "xyz_Latn").mkdir()                       # unknown ISO 639-3 code
    _write_jsonl(tmp_path / "xyz_Latn" / "a.jsonl", ["ignored"])
    (tmp_path / "german").mkdir()                          # not a tag at all
    (tmp_path / "spa_Latn").mkdir()                        # nothing usable
    (tmp_path / "spa_Latn" / "empty.txt").write_text("")
    c = open_corpus(tmp_path)
    assert c.languages == ["fra_Latn"]
    assert list(c.documents("fra_Latn")) == ["Encore un document.", "Un document valide."]
    assert dict(c.skipped.counts) == {
        "invalid-utf8": 1, "binary-file": 1, "empty-file": 2, "bad-jsonl-line": 2, "unsupported-file": 1,
        "parquet-no-text-column": 1, "bad-parquet": 1, "unknown-language-folder": 2, "empty-language": 1}
    assert "latin1.txt" in c.skipped.summary()


def test_invalid_utf8_costs_only_its_line_or_document_and_nul_anywhere_is_binary(tmp_path):
    lang = tmp_path / "fra_Latn"
    lang.mkdir()
    lines = [json.dumps({"text": f"Document {i}."}).encode() for i in range(200)]
    lines[57] = b'{"text": "caf\xe9"}'  # Latin-1 byte inside one line
    (lang / "a.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (lang / "b.txt").write_bytes("Premier.\n\nSecond \xe9t\xe9.\n\nTroisième.\n".encode("utf-8").replace(
        "Second \xe9t\xe9".encode("utf-8"), b"Second \xe9t\xe9"))
    (lang / "c.txt").write_bytes(b"Du texte. " * 8000 + b"\x00\x01\x02")  # NUL bytes only after 64 KB
    c = open_corpus(tmp_path)
    docs = list(c.documents("fra_Latn"))
    assert docs == [f"Document {i}." for i in range(200) if i != 57] + ["Premier.", "Troisième."]
    assert dict(c.skipped.counts) == {"invalid-utf8": 2, "binary-file": 1}
    assert c.skipped.examples["invalid-utf8"] == [f"{lang / 'a.jsonl'}:58", f"{lang / 'b.txt'} (document 2)"]


def test_nothing_usable_is_one_clear_error(tmp_path):
    (tmp_path / "deu_Latn").mkdir()
    (tmp_path / "deu_Latn" / "x.bin").write_bytes(b"\x00\x01")
    with pytest.raises(ValueError, match="no usable language folder"):
        open_corpus(tmp_path)
    with pytest.raises(FileNotFoundError, match="corpus build"):
        open_corpus(tmp_path / "missing")


def test_refuses_the_eval_data(tmp_path, monkeypatch):
    ev = tmp_path / "eval"
    _write_jsonl(ev / "deu_Latn" / "a.jsonl", ["Ein Testsatz aus den Evaluationsdaten."])
    monkeypatch.setenv("MMBERT_EVAL_DATA", str(ev))
    with pytest.raises(ValueError, match="evaluation data"):
        open_corpus(ev)


def test_import_hf_dataset_from_local_parquet(tmp_path):
    src = tmp_path / "src.parquet"
    docs = [f"Dokument Nummer {i} mit etwas Text." for i in range(10)] + [""]
    pq.write_table(pa.table({"text": docs, "url": ["u"] * 11}), src)
    got = import_hf_dataset("parquet", tmp_path / "corpus", "deu_Latn", data_files=str(src), max_docs=7,
                            progress=False)
    assert got["docs"] == 7
    c = open_corpus(tmp_path / "corpus")
    assert list(c.documents("deu_Latn")) == docs[:7]
    with pytest.raises(ValueError, match="no 'body' column"):
        import_hf_dataset("parquet", tmp_path / "corpus", "deu_Latn", data_files=str(src), text_column="body",
                          progress=False)
