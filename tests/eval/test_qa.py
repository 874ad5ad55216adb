"""XQuAD extractive QA: SQuAD metrics, char↔token spans, windows, the span head's training, the task end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmbert.eval import data as D
from mmbert.eval.backbone import load_backbone
from mmbert.eval.finetune import FinetuneConfig, finetune
from mmbert.eval.metrics import squad_exact_match, squad_f1, squad_normalize, squad_scores
from mmbert.eval.qa import (build_features, char_to_token_span, load_squad, pair_framing, predict_answers,
                            qa_collate, qa_loss_fn, token_span_to_text, windows, xquad_split)
from mmbert.eval.runner import TaskSpec, run_suite

PEOPLE = ["Barack Obama", "Angela Merkel"]
CITIES = ["Paris", "Berlin"]


def squad_json(paragraphs: list[tuple[str, list[tuple[str, str, str]]]]) -> str:
    """[(context, [(id, question, answer), ...]), ...] → SQuAD v1.1 JSON (answer_start computed)."""
    paras = [{"context": c, "qas": [{"id": i, "question": q, "answers": [{"text": a, "answer_start": c.index(a)}]}
                                    for i, q, a in qas]} for c, qas in paragraphs]
    return json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": paras}]}, ensure_ascii=False)


def fixture_paragraphs(n: int, lang: str = "en") -> list:
    tail = "The cat sits on the mat in the park ." if lang == "en" else "Die Katze sitzt auf der Matte ."
    out = []
    for k in range(n):
        who, city = PEOPLE[k % 2], CITIES[(k // 2) % 2]
        ctx = f"{who} visited {city} . {tail}"
        out.append((ctx, [(f"{k}-0", f"Who visited {city} ?", who), (f"{k}-1", f"Where did {who} go ?", city)]))
    return out


def write_xquad(root: Path, n: int = 6, langs=("en", "de")) -> Path:
    (root / "xquad").mkdir(parents=True, exist_ok=True)
    for lang in langs:
        (root / "xquad" / f"xquad.{lang}.json").write_text(squad_json(fixture_paragraphs(n, lang)), encoding="utf-8")
    return root


# ----------------------------------------------------------------------------- metrics
def test_squad_metrics_match_hand_computed_values():
    # normalisation: case, ASCII punctuation (removed, not spaced), articles, whitespace
    assert squad_normalize("  The Eiffel-Tower,  in   PARIS! ") == "eiffeltower in paris"
    assert squad_normalize("an apple a day") == "apple day"
    assert squad_normalize("theatre") == "theatre"  # articles only as whole words
    assert squad_exact_match("The Eiffel Tower.", ["eiffel tower"]) == 1.0
    assert squad_exact_match("Eiffel", ["eiffel tower"]) == 0.0
    # (approx: F1 = 2PR/(P+R) of small fractions in float64 rounds by ~eps64)
    # F1 on tokens: pred {big, red, cat}, gold {red, cat, sat}: 2 shared → P = R = 2/3
    assert squad_f1("the big red cat", ["a red cat sat"]) == pytest.approx(2 / 3)
    # repeated tokens count once each: pred {cat, cat} vs {cat}: P = 1/2, R = 1 → 2/3
    assert squad_f1("cat cat", ["cat"]) == pytest.approx(2 / 3)
    assert squad_f1("dog", ["cat"]) == 0.0 and squad_f1("", ["cat"]) == 0.0
    # several gold answers: the best one counts (P = 1, R = 2/3 → 0.8 against the second)
    assert squad_f1("red cat", ["blue dog", "a red cat sat"]) == pytest.approx(0.8)
    assert squad_exact_match("red cat", ["blue dog", "The red cat"]) == 1.0
    s = squad_scores(["red cat", "dog", "Paris"], [["a red cat sat"], ["cat"], ["paris", "Paris, France"]])
    assert s["exact_match"] == pytest.approx(1 / 3)
    assert s["f1"] == pytest.approx((0.8 + 0.0 + 1.0) / 3)
    with pytest.raises(ValueError, match="2 predictions for 1"):
        squad_scores(["a", "b"], [["a"]])


# ----------------------------------------------------------------------------- spans and windows
@pytest.mark.parametrize("which", ["ours", "bert"])
def test_char_token_span_round_trip(which, ours_dir, bert_dir):
    bb = load_backbone({"ours": ours_dir, "bert": bert_dir}[which])
    ctx = "Barack Obama visited Paris and the cat sits on the mat in the park"
    offsets = bb.tokenizer(ctx, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    for answer in ("Barack Obama", "Paris", "the mat", "park", "visited Paris and the cat"):
        s = ctx.index(answer)
        first, last = char_to_token_span(offsets, s, s + len(answer))
        assert token_span_to_text(ctx, offsets, first, last) == answer
        assert first == 0 if answer.startswith("Barack") else first > 0
    # a span inside a token maps to the token(s) covering it
    s = ctx.index("bam")
    first, last = char_to_token_span(offsets, s, s + 3)
    assert "bam" in token_span_to_text(ctx, offsets, first, last)
    assert char_to_token_span(offsets, len(ctx) + 5, len(ctx) + 9) is None


def test_windows_cover_every_token_with_the_stride():
    for n in range(0, 40):
        for size in range(1, 12):
            for stride in (0, 1, 3, 8, 20):
                w = windows(n, size, stride)
                assert w[0][0] == 0 and w[-1][1] == n
                assert all(hi - lo <= size for lo, hi in w)
                assert set(range(n)) == {t for lo, hi in w for t in range(lo, hi)}
                overlap = min(stride, size // 2)
                assert all(a[1] - b[0] == overlap for a, b in zip(w, w[1:]))  # consecutive windows overlap
    with pytest.raises(ValueError, match="size"):
        windows(5, 0, 1)


def test_features_windows_and_cls_targets(ours_dir):
    bb = load_backbone(ours_dir)
    ctx = " ".join(["The cat sits on the mat ."] * 6) + " Barack Obama visited Paris ."
    ex = load_squad_from(ctx, [("q", "Who visited Paris ?", "Barack Obama")])
    f = build_features(bb, ex, max_len=32, stride=8)
    pre, mid, post = pair_framing(bb)
    assert (pre, mid, post) == ([2], [1], [1])
    ctx_ids = bb.tokenizer(ctx, add_special_tokens=False)["input_ids"]
    assert len(f) > 2 and all(len(x) <= 32 for x in f.ids)
    covered = set()
    for ids, pos, (lo, hi), s, e in zip(f.ids, f.ctx_pos, f.window, f.start, f.end):
        assert ids[:1] == pre and ids[-1:] == post and ids[pos - 1] == mid[0]
        assert ids[pos:pos + hi - lo] == ctx_ids[lo:hi]  # the window's context tokens, in place
        covered |= set(range(lo, hi))
        if s == 0:  # answer not (wholly) inside this window: start = end = CLS position
            assert e == 0
        else:
            assert bb.tokenizer.decode(ids[s:e + 1]).replace(" ", "").replace("▁", "") == "BarackObama"
    assert covered == set(range(len(ctx_ids)))
    assert f.start[0] == 0 and f.start[-1] > 0  # the answer is at the end: only the last window(s) hold it


def load_squad_from(ctx: str, qas) -> list:
    """One paragraph's questions through load_squad (a temporary SQuAD file)."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "x.json"
        p.write_text(squad_json([(ctx, qas)]), encoding="utf-8")
        return load_squad(p)


@pytest.mark.parametrize("which", ["bert", "xlmr"])
def test_pair_framing_matches_pair_tasks(which, bert_dir, xlmr_dir):
    bb = load_backbone({"bert": bert_dir, "xlmr": xlmr_dir}[which])
    ex = load_squad_from("The cat sits on the mat .", [("q", "Where does the cat sit ?", "the mat")])
    f = build_features(bb, ex, max_len=64, stride=16)
    assert len(f) == 1
    # the same ids as the harness's (native) pair framing: [CLS] q [SEP] c [SEP]
    assert f.ids[0] == bb.tokenize(["Where does the cat sit ?"], ["The cat sits on the mat ."], max_len=64)[0]


# ----------------------------------------------------------------------------- training
def test_finetune_lowers_the_qa_loss_and_learns_the_span(ours_dir, tmp_path):
    bb = load_backbone(ours_dir)
    ex = load_squad(write_xquad(tmp_path, n=8, langs=("en",)) / "xquad" / "xquad.en.json")
    feats = build_features(bb, ex, max_len=48, stride=16)
    assert all(s > 0 for s in feats.start)  # short contexts: one window each, answer inside
    cfg = FinetuneConfig(lr=3e-3, epochs=60, batch_size=64, dropout=0.0, warmup_frac=0.0)  # 60 full-batch steps
    model, losses = finetune(bb, feats, num_labels=2, cfg=cfg, seed=0, progress=False, loss_fn=qa_loss_fn,
                             collate_fn=qa_collate, per_token=True)
    assert losses[-1] < losses[0] - 1.0
    with torch.no_grad():
        loss, n = qa_loss_fn(model, qa_collate(feats, range(len(feats)), bb.pad_id))
    # losses[-1] is logged before the last of the 60 updates, so this evaluation after it is a step
    # further on; 0.5 nats allows that step, while a sum-for-mean bug would be ×8 (8 features) off
    assert int(n) == len(feats) and float(loss) / len(feats) == pytest.approx(losses[-1], abs=0.5)
    preds = predict_answers(model, feats, ex, pad_id=bb.pad_id)
    assert squad_scores(preds, [e.answers for e in ex])["exact_match"] >= 0.75
    # the backbone itself is untouched (each seed fine-tunes a copy)
    fresh = load_backbone(ours_dir).model.state_dict()
    for k, v in bb.model.state_dict().items():
        torch.testing.assert_close(v, fresh[k], atol=0, rtol=0)  # exact: untouched, read from the same file


# ----------------------------------------------------------------------------- the task
@pytest.mark.parametrize("which", ["ours", "bert", "xlmr"])
def test_xquad_task_end_to_end(which, ours_dir, bert_dir, xlmr_dir, tmp_path):
    root = write_xquad(tmp_path / "evaldata", n=6)
    out = tmp_path / "out"
    spec = TaskSpec("xquad", epochs=1, max_len=48, train_rows=3)
    res = run_suite({"ours": ours_dir, "bert": bert_dir, "xlmr": xlmr_dir}[which], "full", data_dir=root,
                    out_dir=out, seeds=(0, 1), task_specs=[spec], progress=False)
    r = res["tasks"]["xquad"]
    assert "error" not in r, r
    assert r["train_size"] == 6 and set(r["languages"]) == {"en", "de"}
    for v in list(r["languages"].values()) + [r["average"]]:
        assert len(v["values"]) == 2 and len(v["exact_match_values"]) == 2  # one score per seed
        assert all(0.0 <= x <= 1.0 for x in v["values"] + v["exact_match_values"])
        assert all(em <= f1 + 1e-9 for em, f1 in zip(v["exact_match_values"], v["values"]))  # float64 means
    assert all(v["questions"] == 6 for v in r["languages"].values())  # paragraphs 3-5, 2 questions each
    # a mean of means in another order: float64 rounding (approx's default rel 1e-6)
    assert r["average"]["mean"] == pytest.approx(sum(v["mean"] for v in r["languages"].values()) / 2)
    md = (out / "results.md").read_text()
    assert "## xquad" in md and "exact match" in md and "| xquad | F1" in md
    assert (out / "plots" / "xquad.png").is_file()
    assert json.loads((out / "results.json").read_text())["tasks"]["xquad"]["protocol"].startswith("fine-tune")


def test_xquad_in_full_suite_only():
    from mmbert.eval.runner import suite_tasks
    from mmbert.eval.taskfile import builtin_names

    assert "xquad" in builtin_names()
    assert [t for t in suite_tasks("full") if t.name == "xquad"][0].protocol.max_len == 256
    assert "xquad" not in {t.name for t in suite_tasks("quick")}


@pytest.mark.parametrize("problem", ["json", "missing", "start", "parallel"])
def test_malformed_xquad_is_one_clear_error(problem, ours_dir, tmp_path):
    root = write_xquad(tmp_path / "evaldata", n=4)
    p = root / "xquad" / "xquad.de.json"
    doc = json.loads(p.read_text(encoding="utf-8"))
    qa = doc["data"][0]["paragraphs"][1]["qas"][0]
    if problem == "json":
        p.write_text(p.read_text(encoding="utf-8")[:-5], encoding="utf-8")
        expect = f"{p}:1: invalid JSON"
    elif problem == "missing":
        del doc["data"][0]["paragraphs"][1]["context"]
        expect = f"{p}: data[0].paragraphs[1]: missing 'context'"
    elif problem == "start":
        qa["answers"][0]["answer_start"] += 2
        expect = f"{p}: data[0].paragraphs[1].qas[0].answers[0]: answer_start"
    else:
        qa["id"] = "other"
        expect = f"{p}: question ids / paragraphs differ from xquad.en.json"
    if problem != "json":
        p.write_text(json.dumps(doc), encoding="utf-8")
    res = run_suite(ours_dir, "full", data_dir=root, out_dir=tmp_path / "out", progress=False, plots=False,
                    task_specs=[TaskSpec("xquad", epochs=1, max_len=48, train_rows=2)])
    assert res["tasks"]["xquad"]["error"].startswith(f"task 'xquad': {expect}"), res["tasks"]["xquad"]
    with pytest.raises(D.EvalDataError):
        xquad_split(root, "de", load_squad(root / "xquad" / "xquad.en.json"))


REAL = D.resolve_data_dir()


@pytest.mark.skipif(not (REAL / "xquad" / "xquad.en.json").is_file(), reason="real XQuAD data absent")
def test_real_xquad_split_and_a_small_slice(ours_dir, tmp_path):
    en = load_squad(REAL / "xquad" / "xquad.en.json")
    train, test = xquad_split(REAL, "en")
    assert len(train) + len(test) == len(en) and {e.paragraph for e in train} == set(range(120))
    zh_train, zh_test = xquad_split(REAL, "zh", en)
    assert [e.id for e in zh_test] == [e.id for e in test]  # the same held-out paragraphs in every language
    assert not {e.context for e in train} & {e.context for e in test}
    res = run_suite(ours_dir, "full", data_dir=REAL, out_dir=tmp_path / "out", seeds=(0,), progress=False,
                    plots=False, task_specs=[TaskSpec("xquad", epochs=1, max_len=96, max_train=24, max_eval=6,
                                                      languages=("en", "zh", "th"))])
    r = res["tasks"]["xquad"]
    assert set(r["languages"]) == {"en", "zh", "th"} and r["train_size"] == 24
    assert all(v["questions"] == 6 and 0.0 <= v["mean"] <= 1.0 for v in r["languages"].values())
