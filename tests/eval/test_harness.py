"""The harness end to end on tiny models: ours, transformers BERT and XLM-R directories."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from mmbert.eval import data as D
from mmbert.eval.backbone import load_backbone, load_mlm_model
from mmbert.eval.finetune import FinetuneConfig, encode_examples, encode_tagged, finetune, predict, task_loss_fn, collate
from mmbert.eval.runner import TaskSpec, run_suite, suite_tasks

TINY = [  # every task of the full suite, shrunk to the fixture data
    TaskSpec("sib200", epochs=1), TaskSpec("sib200-retrieval"), TaskSpec("tatoeba", max_eval=10),
    TaskSpec("xnli", epochs=1, train_rows=20), TaskSpec("pawsx", epochs=1, train_rows=20),
    TaskSpec("wikiann", epochs=1, max_eval=8), TaskSpec("udpos", epochs=1), TaskSpec("sst2", epochs=1, max_train=16),
    TaskSpec("nusax", epochs=1, max_train=8), TaskSpec("xquad-retrieval"), TaskSpec("mlm"),
]


def test_framing_ours_and_bert(ours_dir, bert_dir, xlmr_dir):
    ours, bert, xlmr = load_backbone(ours_dir), load_backbone(bert_dir), load_backbone(xlmr_dir)
    assert ours.name.startswith("mmbert:") and bert.name == "transformers:BertModel"
    assert xlmr.name == "transformers:XLMRobertaModel"
    # our bare tokenizer.json gets <cls>=2 … <sep>=1 from the config; BERT's tokenizer frames itself
    assert (ours.prefix, ours.suffix, ours.native) == ([2], [1], False)
    assert (bert.prefix, bert.suffix, bert.native) == ([2], [1], True)
    a, b = ours.tokenize(["The cat"], ["Der Hund"], max_len=64)[0], bert.tokenize(["The cat"], ["Der Hund"], max_len=64)[0]
    assert a == b and a[0] == 2 and a[-1] == 1 and a.count(1) == 2
    long = ours.tokenize(["The cat sits " * 40], ["Der Hund " * 40], max_len=32)[0]
    assert len(long) == 32 and long.count(1) == 2  # longest-first truncation keeps both separators
    ids, starts = ours.tokenize_words([("The", "cat", "Katze")], max_len=64)
    assert ids[0][0] == 2 and ids[0][-1] == 1 and starts[0][0] == 1 and starts[0] == sorted(starts[0])


def test_finetune_steps_lower_the_loss(ours_dir, fixture_data):
    bb = load_backbone(ours_dir)
    cfg = FinetuneConfig(lr=3e-3, epochs=8, batch_size=64, dropout=0.0, warmup_frac=0.0)
    # sequence task: one batch = the whole set, so every step sees the same examples
    train = encode_examples(bb, D.load_sib200(fixture_data, "eng_Latn", "train")[:16])
    _, losses = finetune(bb, train, num_labels=7, cfg=cfg, seed=0, progress=False)
    assert losses[-1] < losses[0] - 0.1
    # token task (UPOS on do/n't/cat): learnable, so predictions become right
    sents = D.load_conllu(fixture_data / "ud/UD_English-EWT/en_ewt-ud-dev.conllu")[:8]
    tagged = encode_tagged(bb, sents)
    model, losses = finetune(bb, tagged, num_labels=len(D.UPOS_TAGS), cfg=cfg, seed=0, progress=False)
    assert losses[-1] < losses[0] - 0.1
    assert predict(model, tagged, pad_id=bb.pad_id)[0] == list(sents[0].tags)
    # the pretrained weights themselves are untouched (each seed fine-tunes a copy)
    fresh = load_backbone(ours_dir).model.state_dict()
    for k, v in bb.model.state_dict().items():
        torch.testing.assert_close(v, fresh[k], atol=0, rtol=0)  # exact: untouched, read from the same file


def test_loss_fn_counts_labelled_items(ours_dir, fixture_data):
    bb = load_backbone(ours_dir)
    tagged = encode_tagged(bb, D.load_conllu(fixture_data / "ud/UD_English-EWT/en_ewt-ud-dev.conllu")[:4])
    from mmbert.eval.finetune import TaskModel

    model = TaskModel(bb.model, bb.hidden_size, len(D.UPOS_TAGS), per_token=True)
    loss_sum, count = task_loss_fn(model, collate(tagged, [0, 1, 2, 3], bb.pad_id))
    assert int(count) == 12  # 4 sentences × 3 words, first sub-words only


@pytest.mark.parametrize("which", ["ours", "bert", "xlmr"])
def test_run_suite_on_every_backbone(which, ours_dir, bert_dir, xlmr_dir, fixture_data, tmp_path):
    model_dir = {"ours": ours_dir, "bert": bert_dir, "xlmr": xlmr_dir}[which]
    out = tmp_path / "out"
    specs = TINY if which == "ours" else [s for s in TINY if s.name in ("sib200", "tatoeba", "wikiann", "xnli")]
    res = run_suite(model_dir, "full", data_dir=fixture_data, out_dir=out, seeds=(0, 1), task_specs=specs,
                    progress=False)
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["tasks"].keys() == res["tasks"].keys() == {s.name for s in specs}
    assert res["tasks"]["mlm"]["skipped"] if which == "ours" else True
    for name, r in res["tasks"].items():
        if name == "mlm":
            continue
        assert 0.0 <= r["average"]["mean"] <= 1.0, (name, r)
        for lang, v in r["languages"].items():
            assert 0.0 <= v["mean"] <= 1.0
            if "values" in v:
                assert len(v["values"]) == 2  # one score per seed
    assert res["tasks"]["sib200"]["languages"].keys() == {"eng_Latn", "deu_Latn"}
    md = (out / "results.md").read_text()
    assert "| sib200 | accuracy |" in md and "## tatoeba" in md
    assert (out / "plots" / "sib200.png").stat().st_size > 1000
    cached = sorted(p.name for p in (out / "cache").rglob("*.npz"))
    assert cached  # tokenized data cached, and reused: a second run writes nothing new
    run_suite(model_dir, "full", data_dir=fixture_data, out_dir=out, seeds=(0,), task_specs=specs[:1],
              progress=False, plots=False)
    assert sorted(p.name for p in (out / "cache").rglob("*.npz")) == cached


def test_absent_data_dir_skips_tasks(ours_dir, tmp_path, capsys):
    res = run_suite(ours_dir, "quick", data_dir=tmp_path / "missing", out_dir=tmp_path / "out", progress=True)
    assert all("skipped" in r for r in res["tasks"].values())
    err = capsys.readouterr().err
    assert err.count("not found") == 1 and "--data-dir" in err  # one message, not one per task
    assert (tmp_path / "out" / "results.md").exists()


def test_malformed_line_is_reported_by_the_runner(ours_dir, fixture_data, tmp_path):
    p = fixture_data / "sib200/deu_Latn/test.tsv"
    p.write_text(p.read_text(encoding="utf-8") + "99\tcooking\tbad row\n", encoding="utf-8")
    res = run_suite(ours_dir, "full", data_dir=fixture_data, out_dir=tmp_path / "out",
                    task_specs=[TaskSpec("sib200", epochs=1), TaskSpec("tatoeba", max_eval=5)], progress=False)
    assert f"{p}:26: unknown label 'cooking'" in res["tasks"]["sib200"]["error"]
    assert "average" in res["tasks"]["tatoeba"]  # other tasks still run


def test_suites_are_consistent():
    full, quick = suite_tasks("full"), suite_tasks("quick")
    assert {t.name for t in quick} <= {t.name for t in full}
    assert {t.name for t in full} == {"mlm", "sib200", "sib200-retrieval", "tatoeba", "xnli", "pawsx", "wikiann",
                                      "udpos", "sst2", "nusax", "xquad-retrieval", "xquad"}
    with pytest.raises(ValueError, match="quick"):
        suite_tasks("medium")


# ----------------------------------------------------------------------------- per-language MLM
def _shards(root, vocab: int, langs=("deu_Latn", "eng_Latn", "yor_Latn")):
    from mmbert.data.shards import ShardWriter, write_index

    rng = np.random.default_rng(0)
    info = {}
    for i, lang in enumerate(langs):
        info[lang] = {}
        for split, n_docs in (("train", 4 * (3 - i)), ("heldout", 6)):
            with ShardWriter(root, lang, split, "uint16") as w:
                for _ in range(n_docs):
                    w.add(rng.integers(5, vocab, size=int(rng.integers(20, 90))).astype(np.uint16))
            info[lang][split] = w.counts
    write_index(root, info, "uint16", vocab, {"name": "test"})
    return root


def test_evaluate_mlm_is_deterministic_and_per_language(ours_dir, tmp_path):
    from mmbert.eval.mlm import evaluate_mlm

    model = load_mlm_model(ours_dir)
    shards = _shards(tmp_path / "shards", model.config.vocab_size)
    model.train()
    res = evaluate_mlm(model, shards, max_tokens_per_lang=200, seq_len=64, batch_size=4,
                       tiers=[("high", "top:1"), ("low", "all")])
    assert model.training  # the loop's mode is restored
    assert set(res["languages"]) == {"deu_Latn", "eng_Latn", "yor_Latn"}
    deu = res["languages"]["deu_Latn"]
    assert deu["tokens"] == 200 and 0 < deu["masked_tokens"] < 200 and deu["tier"] == "high"
    # random-init model: loss near ln(V), accuracy near 0 (init σ 0.02 keeps the logits ≪ 1, so the
    # softmax is near uniform: within 1 nat of ln V, which an unnormalised or per-batch loss is not)
    assert abs(deu["loss"] - np.log(model.config.vocab_size)) < 1.0 and deu["accuracy"] < 0.2
    assert res["tiers"]["low"]["languages"] == 2
    again = evaluate_mlm(model, shards, ["yor_Latn"], max_tokens_per_lang=200, seq_len=64, batch_size=4)
    # the same masked positions whatever else is evaluated: exact (batches are per language, so the
    # same rows run through the same ops)
    assert again["languages"]["yor_Latn"]["loss"] == res["languages"]["yor_Latn"]["loss"]
    other_seed = evaluate_mlm(model, shards, ["yor_Latn"], max_tokens_per_lang=200, seq_len=64, seed=1)
    assert other_seed["languages"]["yor_Latn"]["masked_tokens"] != deu["masked_tokens"] or \
        other_seed["languages"]["yor_Latn"]["loss"] != res["languages"]["yor_Latn"]["loss"]


def test_evaluate_mlm_transformers_dense_logits(bert_dir, tmp_path):
    from mmbert.eval.mlm import evaluate_mlm

    model = load_mlm_model(bert_dir)  # BertForMaskedLM: dense [B, T, V] logits, [MASK] id from config
    shards = _shards(tmp_path / "shards", model.config.vocab_size, langs=("deu_Latn",))
    res = evaluate_mlm(model, shards, max_tokens_per_lang=120, seq_len=32, mask_id=4, cls_id=2, sep_id=1)
    assert res["languages"]["deu_Latn"]["masked_tokens"] > 0
    assert np.isfinite(res["macro"]["loss"])


def test_run_suite_with_shards_runs_mlm(ours_dir, tmp_path):
    shards = _shards(tmp_path / "shards", load_mlm_model(ours_dir).config.vocab_size)
    res = run_suite(ours_dir, "quick", data_dir=tmp_path / "none", out_dir=tmp_path / "out", shards=shards,
                    task_specs=[dataclasses.replace(TaskSpec("mlm"), max_eval=100)], progress=False)
    r = res["tasks"]["mlm"]
    assert set(r["languages"]) == {"deu_Latn", "eng_Latn", "yor_Latn"} and "tiers" in r


def test_cli_eval(ours_dir, fixture_data, tmp_path):
    from mmbert.cli import main

    rc = main(["eval", "--model", str(ours_dir), "--suite", "quick", "--data-dir", str(fixture_data),
               "--out", str(tmp_path / "out"), "--tasks", "tatoeba", "--seed", "3"])
    assert rc == 0
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert list(res["tasks"]) == ["tatoeba"] and res["seeds"] == [3]
    assert main(["eval", "--model", str(tmp_path / "nope"), "--suite", "quick", "--out", str(tmp_path / "o")]) == 1


@pytest.mark.parametrize("which", ["ours", "bert"])
def test_word_tokenization_is_running_text(which, ours_dir, bert_dir):
    bb = load_backbone({"ours": ours_dir, "bert": bert_dir}[which])
    sents = [("Angela", "Merkel", "lebt", "in", "Berlin", "."), ("Кошка", "сидит", "—", "猫坐在垫子上。"), ("cat",)]
    ids, starts = bb.tokenize_words(sents, max_len=64)
    for words, x, st in zip(sents, ids, starts):
        assert x == bb.tokenize([" ".join(words)], max_len=64)[0]  # same ids as the sentence itself
        assert len(st) == len(words) and all(a < b for a, b in zip(st, st[1:]))  # one distinct start per word
        assert st[0] == len(bb.prefix) and all(len(bb.prefix) <= s < len(x) - len(bb.suffix) for s in st)
    short, cut = bb.tokenize_words([tuple(["Berlin"] * 40)], max_len=12)
    assert len(short[0]) == 12 and cut[0][-1] == -1 and cut[0][0] == len(bb.prefix)


def test_spread_subset_spans_the_size_ranking():
    from mmbert.eval.mlm import spread_subset

    counts = {f"l{i}": 100 - i for i in range(10)}  # l0 largest … l9 smallest
    assert spread_subset(counts, 3) == ["l0", "l5", "l9"] or spread_subset(counts, 3) == ["l0", "l4", "l9"]
    assert spread_subset(counts, 20) == sorted(counts)
    assert spread_subset(counts, 1) == ["l0"]


def test_mlm_task_language_cap(ours_dir, tmp_path):
    shards = _shards(tmp_path / "shards", load_mlm_model(ours_dir).config.vocab_size)
    res = run_suite(ours_dir, "quick", data_dir=tmp_path / "none", out_dir=tmp_path / "out", shards=shards,
                    task_specs=[TaskSpec("mlm", max_eval=100, max_languages=2)], progress=False)
    assert set(res["tasks"]["mlm"]["languages"]) == {"deu_Latn", "yor_Latn"}  # largest and smallest by train tokens


def test_checkpoint_without_tokenizer_needs_tokenizer_flag(ours_dir, fixture_data, tmp_path):
    import shutil

    from mmbert.eval.backbone import BackboneError

    ckpt = tmp_path / "step_1"
    ckpt.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(ours_dir / f, ckpt / f)
    with pytest.raises(BackboneError, match="tokenizer"):
        load_backbone(ckpt)
    res = run_suite(ckpt, "full", data_dir=fixture_data, out_dir=tmp_path / "out", tokenizer=ours_dir,
                    task_specs=[TaskSpec("tatoeba", max_eval=5)], progress=False)
    assert "average" in res["tasks"]["tatoeba"]


def test_bare_tokenizer_json_specials_come_from_its_tokens_not_mmbert_ids(tmp_path):
    """A directory with only tokenizer.json (no tokenizer_config): the harness names the specials by
    the config's ids or the file's own special tokens — a BERT-style [MASK] at the end of the
    vocabulary — never by mmBERT's ids 0–4, which are ordinary words here."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from mmbert.eval.backbone import load_hf_tokenizer

    vocab = {w: i for i, w in enumerate(["the", "cat", "sat", "on", "mat", "[PAD]", "[UNK]", "[CLS]", "[SEP]",
                                         "[MASK]"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    t = load_hf_tokenizer(tmp_path, config={})
    assert (t.mask_token_id, t.pad_token_id, t.cls_token_id, t.sep_token_id, t.unk_token_id) == (9, 5, 7, 8, 6)
    # the config's ids win where it names them
    assert load_hf_tokenizer(tmp_path, config={"pad_token_id": 0}).pad_token_id == 0
