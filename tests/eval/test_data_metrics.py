"""Loaders (real data when present, fixtures always), malformed-line errors, metrics vs hand counts."""

from __future__ import annotations

import pytest
import torch

from mmbert.eval import data as D
from mmbert.eval.metrics import accuracy, bitext_accuracy, mean_std, retrieval_accuracy, span_f1, token_accuracy


def check_all(root) -> dict[str, int]:
    """Parse every file of every dataset folder present (a malformed line raises with file:line);
    returns items read per dataset."""
    have = D.available(root)
    n: dict[str, int] = {}
    if have["sib200"]:
        n["sib200"] = sum(len(D.load_sib200(root, lang, s)) for lang in D.sib200_languages(root)
                          for s in ("train", "dev", "test") if (root / "sib200" / lang / f"{s}.tsv").exists())
    if have["xnli"]:
        n["xnli"] = sum(len(D.load_xnli(root, lang)) for lang in D.xnli_languages(root))
    if have["pawsx"]:
        n["pawsx"] = sum(len(D.load_pawsx(root, lang)) for lang in D.pawsx_languages(root))
    if have["wikiann"]:
        n["wikiann"] = sum(len(D.load_wikiann(root, lang)) for lang in D.wikiann_languages(root))
        if (root / "wikiann" / "train-en.tsv").exists():
            n["wikiann"] += len(D.load_wikiann(root, "en", "train"))
    if have["ud"]:
        n["ud"] = sum(len(D.load_conllu(p)) for splits in D.ud_treebanks(root).values() for p in splits.values())
    if have["glue/sst2"]:
        n["glue/sst2"] = sum(len(D.load_sst2(root, s)) for s in ("train", "dev", "test")
                             if (root / "glue" / "sst2" / f"{s}.tsv").exists())
    if have["nusax"]:
        n["nusax"] = sum(len(D.load_nusax(root, lang, s)) for lang in D.nusax_languages(root)
                         for s in ("train", "valid", "test")
                         if (root / "nusax" / "sentiment" / lang / f"{s}.csv").exists())
    if have["tatoeba"]:
        n["tatoeba"] = sum(len(D.load_tatoeba(root, lang)[0]) for lang in D.tatoeba_languages(root))
    if have["xquad"]:
        # answers unchecked, as question → paragraph retrieval reads them: the fixture's answer "x" at 0 is no
        # real span (the strict, span-checking read is tested in test_qa)
        n["xquad"] = sum(len(D.load_squad(D.xquad_file(root, lang), answers_required=False))
                         for lang in D.xquad_languages(root))
    return n


# ----------------------------------------------------------------------------- real data (skips if absent)
def test_every_real_dataset_folder_parses(eval_data):
    counts = check_all(eval_data)
    present = [k for k, v in D.available(eval_data).items() if v]
    assert set(counts) == set(present)
    assert all(n > 0 for n in counts.values()), counts


def test_real_labels_map_consistently_across_languages(eval_data):
    if not D.available(eval_data)["sib200"]:
        pytest.skip("sib200 absent")
    # SIB-200 is parallel by index_id: the same sentence has the same label id in every language
    ref = {e.id: e.label for e in D.load_sib200(eval_data, "eng_Latn", "test")}
    for lang in ("deu_Latn", "zho_Hans", "yor_Latn"):
        other = {e.id: e.label for e in D.load_sib200(eval_data, lang, "test")}
        assert other == ref
    if D.available(eval_data)["xnli"]:  # XNLI dev rows are parallel: labels equal row by row
        en = [e.label for e in D.load_xnli(eval_data, "en")]
        assert [e.label for e in D.load_xnli(eval_data, "sw")] == en
        assert set(en) == {0, 1, 2}


def test_real_conllu_skips_ranges_and_empty_nodes(eval_data):
    banks = D.ud_treebanks(eval_data) if D.available(eval_data)["ud"] else {}
    if "UD_English-EWT" not in banks:
        pytest.skip("UD_English-EWT absent")
    path = banks["UD_English-EWT"]["dev"]
    words = sum(1 for line in path.read_text(encoding="utf-8").splitlines()
                if line and not line.startswith("#") and line.split("\t")[0].isdigit())
    assert sum(len(s.words) for s in D.load_conllu(path)) == words


# ----------------------------------------------------------------------------- fixture data
def test_fixture_loaders(fixture_data):
    counts = check_all(fixture_data)
    assert set(counts) == {k for k, v in D.available(fixture_data).items() if v}
    sents = D.load_conllu(fixture_data / "ud/UD_English-EWT/en_ewt-ud-dev.conllu")
    # "1-2 don't" range and the "2.1" empty node are skipped: do/AUX n't/PART cat/NOUN
    assert sents[0].words == ("do", "n't", "cat")
    assert [D.UPOS_TAGS[t] for t in sents[0].tags] == ["AUX", "PART", "NOUN"]
    nx = D.load_nusax(fixture_data, "english", "train")
    assert nx[0].text.endswith(", quoted")  # quoted CSV field with a comma
    assert {e.label for e in nx} == {0, 1, 2}
    ner = D.load_wikiann(fixture_data, "de")
    assert [D.WIKIANN_TAGS[t] for t in ner[0].tags] == ["B-PER", "I-PER", "O", "B-LOC", "O"]


def test_same_label_same_id_in_every_language(fixture_data):
    for lang in ("eng_Latn", "deu_Latn"):
        ex = D.load_sib200(fixture_data, lang, "train")
        assert [D.SIB200_LABELS[e.label] for e in ex[:3]] == ["science/technology", "travel", "politics"]


@pytest.mark.parametrize("rel,line,lineno,needle", [
    ("xnli/dev-de.tsv", "premise only\tentailment", 7, "expected 3 tab-separated columns"),
    ("xnli/dev-de.tsv", "a\tb\tmaybe", 3, "unknown label 'maybe'"),
    ("sib200/deu_Latn/test.tsv", "9\tcooking\tsome text", 5, "unknown label 'cooking'"),
    ("wikiann/dev-de.tsv", "Berlin B-LOC", 4, "expected 'token<TAB>TAG'"),
    ("ud/UD_German-GSD/de_gsd-ud-test.conllu", "1\tcat\tcat\tNOUN", 2, "10 tab-separated columns"),
    ("ud/UD_German-GSD/de_gsd-ud-test.conllu", "1\tcat\tcat\tNOUNISH\t_\t_\t0\troot\t_\t_", 3, "unknown label"),
    ("nusax/sentiment/javanese/test.csv", "5,text,angry", 4, "unknown label 'angry'"),
    ("glue/sst2/test.tsv", "nice film\t1\textra", 2, "expected 2 tab-separated columns"),
])
def test_malformed_line_names_file_and_line(fixture_data, rel, line, lineno, needle):
    path = fixture_data / rel
    lines = path.read_text(encoding="utf-8").split("\n")
    lines.insert(lineno - 1, line)
    path.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(D.EvalDataError) as e:
        check_all(fixture_data)
    assert f"{path}:{lineno}:" in str(e.value) and needle in str(e.value)


def test_tatoeba_length_mismatch_is_reported(fixture_data):
    p = fixture_data / "tatoeba/tatoeba.deu-eng.deu"
    p.write_text("\n".join(p.read_text(encoding="utf-8").splitlines()[:-2]) + "\n", encoding="utf-8")
    with pytest.raises(D.EvalDataError, match=r"tatoeba\.deu-eng\.deu:23: line-aligned"):
        D.load_tatoeba(fixture_data, "deu")


def test_missing_data_dir_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv(D.ENV_VAR, str(tmp_path / "nowhere"))
    root = D.resolve_data_dir()
    assert root == tmp_path / "nowhere" and not any(D.available(root).values())
    with pytest.raises(D.EvalDataMissing, match="--data-dir"):
        D.load_sib200(root, "eng_Latn")
    assert D.resolve_data_dir(tmp_path) == tmp_path  # explicit argument wins over the env var


# ----------------------------------------------------------------------------- metrics
def test_span_f1_hand_computed():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "I-ORG", "I-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"],   # PER right; LOC predicted as ORG (1 FP, 1 FN)
            ["B-ORG", "I-ORG", "O", "O"]]       # ORG with a wrong right boundary (1 FP, 1 FN)
    # gold entities 3, predicted 3, correct 1 → P = R = 1/3, F1 = 1/3
    assert span_f1(pred, gold) == pytest.approx(1 / 3)  # approx in this test: float64 ratios of counts, ~eps64
    pred2 = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "O", "O", "O"]]  # P = 2/2, R = 2/3 → F1 = 0.8
    assert span_f1(pred2, gold) == pytest.approx(0.8)
    assert span_f1(gold, gold) == 1.0


def test_accuracy_hand_computed():
    assert accuracy([0, 1, 2, 2], [0, 1, 1, 2]) == 0.75
    assert token_accuracy([[1, 2], [3]], [[1, 0], [3]]) == pytest.approx(2 / 3)  # float ratio of counts, ~eps64
    with pytest.raises(ValueError):
        accuracy([0], [0, 1])


def test_retrieval_accuracy_both_directions_hand_computed():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    b = torch.tensor([[1.0, 0.1], [1.0, 0.9], [0.1, 1.0]])
    # a→b: a0→b0 ✓; a1 (0,1)→b2 ✗; a2 (1,1)→b1 (cos .999) ✗   → 1/3
    # b→a: b0→a0 ✓; b1 (1,.9)→a2 ✗; b2 (.1,1)→a1 ✗            → 1/3
    assert retrieval_accuracy(a, b) == pytest.approx(1 / 3)  # float ratio of counts, ~eps64
    swapped = b[[0, 2, 1]]  # now a1↔b2, a2↔b1 are aligned: everything retrieves its pair
    assert bitext_accuracy(a, swapped) == {"a2b": 1.0, "b2a": 1.0}


def test_mean_std():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_std([0.5]) == (0.5, 0.0)
