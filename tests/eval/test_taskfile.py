"""Task files: tiny datasets in every format, every task type end to end, clear errors, built-ins as task files."""

from __future__ import annotations

import dataclasses
import json
import random
import re
from pathlib import Path

import pytest

from mmbert.eval import data as D
from mmbert.eval import taskfile as TF
from mmbert.eval.runner import TaskSpec, run_suite, suite_tasks
from test_qa import fixture_paragraphs, squad_json

LANGS = ("xx", "yy")
WORDS = "cat dog park sport city music film house tree river".split()
FAST = "protocol: {epochs: 1, max_len: 48}"


def _w(root: Path, rel: str, lines: list[str]) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_every_format(root: Path, seed: int = 0) -> Path:
    """One tiny dataset per format, per-language folders / files where a format is usually shipped so."""
    rng = random.Random(seed)
    sent = lambda k=4: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    for lang in LANGS:  # CoNLL NER, MasakhaNER style: `token TAG`, -DOCSTART-, a DATE type WikiANN lacks
        for split in ("train", "test"):
            lines = ["-DOCSTART- -X- O O", ""]
            for i in range(12):
                lines += [f"{rng.choice(WORDS)} B-PER", f"{rng.choice(WORDS)} I-PER", f"{rng.choice(WORDS)} O",
                          f"2024 B-DATE", ""]
            _w(root, f"ner/{lang}/{split}.txt", lines)
        _w(root, f"ud/{lang}-ud-test.conllu",
           [f"# sent_id = {i}\n1\t{rng.choice(WORDS)}\t_\tNOUN\tNN\t_\t0\troot\t_\t_\n2\truns\t_\tVERB\tVB\t_\t1\t_\t_\t_\n"
            for i in range(8)])
        _w(root, f"topic/test-{lang}.tsv", ["sentence\ttopic"] + [f"{sent()}\t{('a', 'b', 'c')[i % 3]}" for i in range(12)])
        _w(root, f"nli/{lang}.csv", [f'"{sent()}, quoted","{sent()}",{("yes", "no")[i % 2]}' for i in range(24)])
        _w(root, f"reviews/{lang}.jsonl", [json.dumps({"review": sent(), "stars": 1 + i % 2}) for i in range(10)])
        _w(root, f"copa/{lang}/val.jsonl", [json.dumps({"premise": sent(), "choice1": sent(2), "choice2": sent(2),
                                                        "question": ("cause", "effect")[i % 2], "label": i % 2, "idx": i})
                                            for i in range(8)])
        # the same without a question field (the default `question` column is optional)
        _w(root, f"copa-noq/{lang}.jsonl", [json.dumps({"premise": sent(), "choice1": sent(2), "choice2": sent(2),
                                                        "label": i % 2}) for i in range(8)])
        _w(root, f"bitext/{lang}-en.{lang}", [sent() for _ in range(10)])
        _w(root, f"bitext/{lang}-en.en", [sent() for _ in range(10)])
        (root / "qa").mkdir(parents=True, exist_ok=True)
        (root / "qa" / f"test.{lang}.json").write_text(squad_json(fixture_paragraphs(3)), encoding="utf-8")
    _w(root, "ud/en-ud-train.conllu", (root / "ud/xx-ud-test.conllu").read_text().splitlines())
    _w(root, "topic/train-en.tsv", ["sentence\ttopic"] + [f"{sent()}\t{('a', 'b', 'c')[i % 3]}" for i in range(18)])
    _w(root, "reviews-train.jsonl", [json.dumps({"review": sent(), "stars": 1 + i % 2}) for i in range(10)])
    _w(root, "copa/train.jsonl", (root / "copa/xx/val.jsonl").read_text().splitlines())
    (root / "qa" / "train.json").write_text(squad_json(fixture_paragraphs(4)), encoding="utf-8")
    return root


TASKS_YAML = f"""
data_dir: data
tasks:
  - name: ner                         # CoNLL over per-language folders, trained in each language
    type: token-classification
    format: conll
    separator: " "
    columns: {{token: 0, tag: -1}}
    train: ner/{{lang}}/train.txt
    eval: ner/{{lang}}/test.txt
    metric: span-f1
    protocol: {{epochs: 1, max_len: 48, transfer: in-language}}
  - name: pos
    type: token-classification
    format: conllu
    train: ud/en-ud-train.conllu
    eval: ud/{{lang}}-ud-test.conllu
    metric: accuracy
    {FAST}
  - name: topic
    type: sequence-classification
    format: tsv
    columns: {{text: sentence, label: topic}}
    train: topic/train-en.tsv
    eval: topic/test-{{lang}}.tsv
    metric: macro-f1
    {FAST}
  - name: nli
    type: pair-classification
    format: csv
    columns: {{text: 0, text_pair: 1, label: 2}}
    labels: [yes, no]
    train: {{path: "nli/{{lang}}.csv", rows: [0, 16]}}
    eval: {{path: "nli/{{lang}}.csv", rows: [16, null]}}
    protocol: {{epochs: 1, max_len: 48, transfer: joint}}
  - name: reviews
    type: sequence-classification
    format: jsonl
    columns: {{text: review, label: stars}}
    train: reviews-train.jsonl
    eval: reviews/{{lang}}.jsonl
    {FAST}
  - name: copa
    type: multiple-choice
    format: jsonl
    train: copa/train.jsonl
    eval: copa/{{lang}}/val.jsonl
    {FAST}
  - name: copa-noq
    type: multiple-choice
    format: jsonl
    train: copa/train.jsonl
    eval: copa-noq/{{lang}}.jsonl
    {FAST}
  - name: qa
    type: extractive-qa
    format: squad
    train: qa/train.json
    eval: qa/test.{{lang}}.json
    protocol: {{epochs: 1, max_len: 48, seeds: [3]}}
  - name: bitext
    type: bitext-retrieval
    format: text
    source: bitext/{{lang}}-en.{{lang}}
    target: bitext/{{lang}}-en.en
    protocol: {{max_eval: 8}}
"""


def test_every_type_and_format_end_to_end(ours_dir, tmp_path):
    from mmbert.cli import main

    write_every_format(tmp_path / "data")
    (tmp_path / "tasks.yaml").write_text(TASKS_YAML, encoding="utf-8")
    out = tmp_path / "out"
    assert main(["eval", "--model", str(ours_dir), "--task-file", str(tmp_path / "tasks.yaml"), "--out", str(out),
                 "--seed", "1"]) == 0
    res = json.loads((out / "results.json").read_text())
    tasks = res["tasks"]
    assert list(tasks) == ["ner", "pos", "topic", "nli", "reviews", "copa", "copa-noq", "qa", "bitext"]
    for name, r in tasks.items():
        assert "error" not in r and "skipped" not in r, (name, r)
        assert set(r["languages"]) == set(LANGS), name  # {lang} discovered from the files present
        assert 0.0 <= r["average"]["mean"] <= 1.0
    # labels collected from train and sorted (the DATE type included); listed labels keep their order
    assert tasks["ner"]["labels"] == ["B-DATE", "B-PER", "I-PER", "O"]
    assert tasks["topic"]["labels"] == ["a", "b", "c"] and tasks["nli"]["labels"] == ["yes", "no"]
    assert tasks["reviews"]["labels"] == ["1", "2"] and tasks["pos"]["labels"] == ["NOUN", "VERB"]
    # in-language: one fine-tune per language on its own 12 sentences; joint: both languages' rows 0-15 pooled
    assert tasks["ner"]["train_size"] == {"xx": 12, "yy": 12} and tasks["nli"]["train_size"] == 32
    assert tasks["qa"]["seeds"] == [3] and tasks["topic"]["seeds"] == [1]  # the task's own seeds win
    assert tasks["qa"]["languages"]["xx"]["questions"] == 6
    assert set(tasks["bitext"]["languages"]["xx"]) >= {"xx2en", "en2xx"}
    assert "| copa | accuracy |" in (out / "results.md").read_text()


def test_multiple_choice_learns_a_shared_scorer(ours_dir, tmp_path):
    """The right choice always says 'cat', the wrong one 'dog', in random positions (the label is a letter):
    one score per (context, choice) pair and a softmax over the choices learn it; a fixed position would be
    right only about half the time."""
    rng = random.Random(0)
    rows = []
    for i in range(16):
        label = rng.randrange(2)
        choices = ["dog", "dog"]
        choices[label] = "cat"
        rows.append(json.dumps({"premise": " ".join(rng.choice(WORDS) for _ in range(3)), "endings": choices,
                                "answer": "AB"[label]}))
    assert 4 <= sum('"answer": "A"' in r for r in rows) <= 12
    _w(tmp_path / "mc", "train.jsonl", rows)
    _w(tmp_path / "mc", "en/test.jsonl", rows)
    (tmp_path / "mc.yaml").write_text("""
- name: mc
  type: multiple-choice
  format: jsonl
  columns: {context: premise, choices: endings, label: answer, question: ""}
  labels: [A, B]
  train: mc/train.jsonl
  eval: mc/{lang}/test.jsonl
  protocol: {epochs: 25, lr: 0.005, batch_size: 16, max_len: 16}
""", encoding="utf-8")
    res = run_suite(ours_dir, "tasks", task_file=tmp_path / "mc.yaml", out_dir=tmp_path / "out", progress=False,
                    plots=False)
    r = res["tasks"]["mc"]
    assert r["languages"]["en"]["mean"] == 1.0, r
    assert r["final_train_loss"][0] < 0.2, r


ERRORS_YAML = """
- name: good
  type: bitext-retrieval
  format: text
  source: bitext/{lang}-en.{lang}
  target: bitext/{lang}-en.en
- name: bad-type
  type: ner
  format: conll
  train: a
  eval: b
- name: bad-format
  type: token-classification
  format: iob
  train: a
  eval: b
- name: bad-metric
  type: sequence-classification
  format: tsv
  metric: bleu
  train: a
  eval: b
- name: no-column
  type: sequence-classification
  format: tsv
  columns: {text: text, label: topic}
  train: topic/train-en.tsv
  eval: topic/test-{lang}.tsv
- name: stray-label
  type: sequence-classification
  format: tsv
  columns: {text: sentence, label: topic}
  labels: [a, b]
  train: topic/train-en.tsv
  eval: topic/test-{lang}.tsv
- name: empty
  type: sequence-classification
  format: jsonl
  columns: {text: review, label: stars}
  train: bad/empty.jsonl
  eval: reviews/{lang}.jsonl
- name: one-label
  type: sequence-classification
  format: jsonl
  columns: {text: review, label: stars}
  train: bad/one.jsonl
  eval: reviews/{lang}.jsonl
- name: no-match
  type: token-classification
  format: conll
  train: ner/xx/train.txt
  eval: masakhaner/{lang}/test.txt
- name: no-answers
  type: extractive-qa
  format: squad
  train: qa/empty-answers.json
  eval: qa/test.{lang}.json
"""


def test_errors_name_task_file_line_and_fix(ours_dir, tmp_path, capsys):
    from mmbert.cli import main

    data = write_every_format(tmp_path)
    _w(data, "bad/empty.jsonl", [""])
    _w(data, "bad/one.jsonl", [json.dumps({"review": "a b", "stars": 5})] * 3)
    doc = json.loads(squad_json(fixture_paragraphs(2)))
    for para in doc["data"][0]["paragraphs"]:
        for qa in para["qas"]:
            qa["answers"] = [{"text": "", "answer_start": 0}]
    (data / "qa" / "empty-answers.json").write_text(json.dumps(doc), encoding="utf-8")
    tf = tmp_path / "bad.yaml"
    tf.write_text(ERRORS_YAML, encoding="utf-8")
    out = tmp_path / "out"
    assert main(["eval", "--model", str(ours_dir), "--task-file", str(tf), "--out", str(out)]) == 1  # exit 1
    tasks = json.loads((out / "results.json").read_text())["tasks"]
    assert "average" in tasks["good"]  # the other tasks still ran
    err = {k: v["error"] for k, v in tasks.items() if k != "good"}
    expect = {  # task, where, what, fix
        "bad-type": (f"{tf}:7", "unknown type 'ner'", "use one of sequence-classification"),
        "bad-format": (f"{tf}:12", "unknown format 'iob'", "use one of conll, conllu, jsonl"),
        "bad-metric": (f"{tf}:17", "unknown metric 'bleu'", "use one of accuracy, macro-f1"),
        "no-column": (f"{data / 'topic/train-en.tsv'}:1", "no column 'text' in the header", "fix `columns:`"),
        "stray-label": (f"{data / 'topic/train-en.tsv'}:4", "unknown label 'c'", "list the label under `labels:`"),
        "empty": (f"{data / 'bad/empty.jsonl'}", "no examples (empty split)", "fill the file"),
        "one-label": (f"{data / 'bad/one.jsonl'}", "every example has the same label ('5')", "at least two"),
        "no-match": (f"{tf}:48", "`eval: masakhaner/{lang}/test.txt` matches no file", "fix the path"),
        "no-answers": (f"{data / 'qa/empty-answers.json'}", "every answer text is empty", "non-empty text"),
    }
    for name, parts in expect.items():
        assert err[name].startswith(f"task '{name}'"), err[name]
        for part in parts:
            assert part in err[name], (name, part, err[name])
        assert err[name].count("\n") == 0  # one line each
    printed = capsys.readouterr().err
    assert all(f"error: task '{name}'" in printed for name in expect)


def test_unreadable_task_file_is_one_error(ours_dir, tmp_path, capsys):
    from mmbert.cli import main

    tf = tmp_path / "broken.yaml"
    tf.write_text("- name: x\n  type: [unclosed\n", encoding="utf-8")
    assert main(["eval", "--model", str(ours_dir), "--task-file", str(tf), "--out", str(tmp_path / "o")]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and re.match(rf"error: {re.escape(str(tf))}:\d+: invalid YAML \(", err[0]), err
    with pytest.raises(TF.TaskFileError, match="not found"):
        TF.load_task_file(tmp_path / "nope.yaml")
    (tmp_path / "extra.yaml").write_text("- name: x\n  type: mlm\n  epochs: 3\n", encoding="utf-8")
    bad = TF.load_task_file(tmp_path / "extra.yaml")[0]
    assert isinstance(bad, TF.InvalidTask) and "unknown key(s) epochs" in bad.error and "protocol" in bad.error


# ----------------------------------------------------------------------------- readers
def test_conll_separators_docstart_and_columns(tmp_path):
    p = tmp_path / "a.conll"
    p.write_text("-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n-DOCSTART- -X- -X- O\n"
                 "Peter NNP B-NP B-PER\n\n\nBlackburn NNP B-NP B-PER\n", encoding="utf-8")
    recs = D.read_conll(p)  # CoNLL-2003: 4 whitespace columns, tag last; -DOCSTART- ends a sentence
    assert [r.values["tokens"] for r in recs] == [["EU", "rejects"], ["Peter"], ["Blackburn"]]
    assert [r.values["tags"] for r in recs] == [["B-ORG", "O"], ["B-PER"], ["B-PER"]]
    assert [r.tag_lines for r in recs] == [(3, 4), (6,), (9,)]
    assert D.read_conll(p, token_column=0, tag_column=1)[0].values["tags"] == ["NNP", "VBZ"]
    t = tmp_path / "b.tsv"
    t.write_text("New York\tB-LOC\n", encoding="utf-8")
    assert D.read_conll(t, separator="\t")[0].values["tokens"] == ["New York"]
    t.write_text("York\tB-LOC\n", encoding="utf-8")
    with pytest.raises(D.EvalDataError, match=r"b.tsv:1: expected a token and a tag separated by ' '"):
        D.read_conll(t, separator=" ")


def test_table_and_jsonl_readers(tmp_path):
    c = tmp_path / "a.csv"
    c.write_text('id,text,label\n1,"hello, world",pos\n2,"say ""hi""",neg\n', encoding="utf-8")
    recs = D.read_table(c, {"text": "text", "label": "label"}, fmt="csv", header=True)
    assert [(r.line, r.values["text"]) for r in recs] == [(2, "hello, world"), (3, 'say "hi"')]
    t = tmp_path / "a.tsv"
    t.write_text('"quoted"\t x \t0\nsecond\ty\t1\nshort\t1\n', encoding="utf-8")
    with pytest.raises(D.EvalDataError, match=r"a.tsv:3: expected 3 tab-separated columns, got 2"):
        D.read_table(t, {"text": 0, "label": 2})
    t.write_text('"quoted"\t x \t0\n', encoding="utf-8")
    r = D.read_table(t, {"text": 0, "text_pair": 1, "label": 2})[0]
    assert r.values == {"text": '"quoted"', "text_pair": " x ", "label": "0"}  # literal quotes, text kept as is
    j = tmp_path / "a.jsonl"
    j.write_text(json.dumps({"q": "Why?", "opts": ["a", "b", "c"], "y": 2}) + "\n\n" + "{bad\n", encoding="utf-8")
    with pytest.raises(D.EvalDataError, match=r"a.jsonl:3: invalid JSON"):
        D.read_jsonl(j, {"context": "q", "choices": "opts", "label": "y"})
    j.write_text(json.dumps({"q": "Why?", "opts": ["a", "b", "c"], "y": 2}) + "\n", encoding="utf-8")
    assert D.read_jsonl(j, {"context": "q", "choices": "opts", "label": "y"})[0].values == \
        {"context": "Why?", "choices": ["a", "b", "c"], "label": "2"}


def test_lang_placeholder_discovery(tmp_path):
    for rel in ("tatoeba/tatoeba.deu-eng.deu", "tatoeba/tatoeba.deu-eng.eng", "tatoeba/tatoeba.fra-eng.fra",
                "ud/UD_Yoruba-YTB/yo_ytb-ud-test.conllu", "ud/UD_Afrikaans-AfriBooms/af-ud-train.conllu"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x\n")
    # a repeated {lang} must be the same language both times (.deu-eng.eng is not language "eng")
    assert list(TF.languages_of(tmp_path, "tatoeba/tatoeba.{lang}-eng.{lang}")) == ["deu", "fra"]
    found = TF.languages_of(tmp_path, "ud/UD_{lang}/*-ud-test.conllu")  # a glob after {lang}
    assert list(found) == ["Yoruba-YTB"] and found["Yoruba-YTB"][0].name == "yo_ytb-ud-test.conllu"
    assert TF.languages_of(tmp_path, str(tmp_path / "tatoeba/tatoeba.{lang}-eng.eng")) == \
        {"deu": [tmp_path / "tatoeba/tatoeba.deu-eng.eng"]}  # absolute patterns too


# ----------------------------------------------------------------------------- built-ins are task files
def test_builtin_tasks_are_shipped_task_files():
    names = TF.builtin_names()
    assert set(names) == {"mlm", "sib200", "sib200-retrieval", "tatoeba", "xnli", "pawsx", "wikiann", "udpos",
                          "sst2", "nusax", "xquad-retrieval", "xquad"}
    full, quick = suite_tasks("full"), suite_tasks("quick")
    assert [t.name for t in full] == ["mlm", "sib200", "sib200-retrieval", "tatoeba", "xnli", "pawsx", "wikiann",
                                      "udpos", "sst2", "nusax", "xquad-retrieval", "xquad"]
    by = {t.name: t for t in full}
    q = {t.name: t for t in quick}
    assert list(q) == ["mlm", "sib200", "sib200-retrieval", "tatoeba", "sst2"]
    # quick = full with a few fields shrunk, nothing else
    assert q["sst2"] == dataclasses.replace(by["sst2"], protocol=dataclasses.replace(by["sst2"].protocol, max_train=2000))
    assert q["sib200"] == dataclasses.replace(by["sib200"], languages=q["sib200"].languages)
    assert len(q["sib200"].languages) == 12 and q["tatoeba"].protocol.max_eval == 300
    assert by["xnli"].train.rows == (0, 2000) and by["xnli"].eval.rows == (2000, None)


def test_a_user_task_file_reproduces_a_builtin(ours_dir, fixture_data, tmp_path):
    """One mechanism: the built-in sib200 and the same task written by a user give the same numbers."""
    builtin = run_suite(ours_dir, "full", data_dir=fixture_data, out_dir=tmp_path / "a", seeds=(0,), progress=False,
                        plots=False, task_specs=[TaskSpec("sib200", epochs=1, max_train=16)])["tasks"]["sib200"]
    (tmp_path / "mine.yaml").write_text(f"""
data_dir: {fixture_data}
tasks:
  - use: sib200
    name: topics
    protocol: {{epochs: 1, max_train: 16}}
""", encoding="utf-8")
    mine = run_suite(ours_dir, "x", task_file=tmp_path / "mine.yaml", out_dir=tmp_path / "b", seeds=(0,),
                     progress=False, plots=False)["tasks"]["topics"]
    assert mine["languages"] == builtin["languages"] and mine["average"] == builtin["average"]


def test_docs_examples_are_valid_task_files(tmp_path):
    """Every YAML block of docs/eval.md's task-file section parses into tasks (no schema error)."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "eval.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", text.split("## Task files", 1)[1], flags=re.S)
    assert len(blocks) == 2
    for i, block in enumerate(blocks):
        (tmp_path / f"{i}.yaml").write_text(block, encoding="utf-8")
        tasks = TF.load_task_file(tmp_path / f"{i}.yaml")
        assert len(tasks) == 2 and all(isinstance(t, TF.Task) for t in tasks), tasks
    ner, zero = TF.load_task_file(tmp_path / "0.yaml")
    assert (ner.protocol.transfer, zero.protocol.transfer) == ("in-language", "zero-shot")


def test_dataset_readers_refuse_degenerate_splits(fixture_data):
    from mmbert.eval.qa import load_squad

    p = fixture_data / "sib200/deu_Latn/test.tsv"
    p.write_text("index_id\tcategory\ttext\n1\tsports\ta\n2\tsports\tb\n", encoding="utf-8")
    with pytest.raises(D.EvalDataError, match=r"test.tsv: every example has the same label \('sports'\)"):
        D.load_sib200(fixture_data, "deu_Latn", "test")
    p.write_text("index_id\tcategory\ttext\n", encoding="utf-8")
    with pytest.raises(D.EvalDataError, match=r"test.tsv: no examples \(empty split\)"):
        D.load_sib200(fixture_data, "deu_Latn", "test")
    q = fixture_data / "xquad" / "xquad.de.json"
    q.write_text(json.dumps({"data": [{"paragraphs": [{"context": "abc", "qas": [
        {"id": "1", "question": "?", "answers": [{"text": "", "answer_start": 1}]}]}]}]}), encoding="utf-8")
    with pytest.raises(D.EvalDataError, match=r"xquad.de.json: every answer text is empty"):
        load_squad(q)
    q.write_text(json.dumps({"data": []}), encoding="utf-8")
    with pytest.raises(D.EvalDataError, match=r"xquad.de.json: no questions \(empty split\)"):
        load_squad(q)
    t = fixture_data / "tatoeba" / "tatoeba.deu-eng.deu"
    t.write_text("", encoding="utf-8")
    with pytest.raises(D.EvalDataError, match="empty file"):
        D.load_tatoeba(fixture_data, "deu")
