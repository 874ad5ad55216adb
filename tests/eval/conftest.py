"""Fixtures for the eval harness: tiny model directories (ours, BERT, XLM-R) and a tiny eval data dir.

Everything is built inside the test session: a BPE tokenizer trained on an inline multilingual text,
random tiny encoders, and data files in the real folder layouts (SOURCES.md) with made-up rows.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

TEXT = """The cat sits on the mat. The dog runs in the park. Football is a popular sport.
Die Katze sitzt auf der Matte. Der Hund läuft im Park. Fußball ist ein beliebter Sport.
Le chat est assis sur le tapis. Le chien court dans le parc. Le football est un sport populaire.
El gato está sentado en la alfombra. El perro corre en el parque. Barack Obama visited Paris.
Кошка сидит на коврике. Собака бежит в парке. 猫坐在垫子上。 Angela Merkel lebt in Berlin.
Kucing duduk di atas tikar. Anjing berlari di taman. Sepak bola adalah olahraga populer."""

SPECIALS = ["[PAD]", "[SEP]", "[CLS]", "[UNK]", "[MASK]"]  # ids 0..4, the mmBERT/Gemma order


def _bpe(vocab_size: int = 300):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(TEXT.split("\n") * 3, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False))
    return tok


def save_tokenizer(path: Path, *, native_framing: bool) -> int:
    """Save a PreTrainedTokenizerFast into path; native_framing adds a [CLS] a [SEP] post-processor."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tok = _bpe()
    if native_framing:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", sep_token="[SEP]", cls_token="[CLS]",
                                   unk_token="[UNK]", mask_token="[MASK]")
    fast.save_pretrained(str(path))
    return tok.get_vocab_size()


def make_ours(path: Path, seed: int = 0) -> Path:
    """Our tiny ModernBERT-architecture MLM directory (mmbert save_pretrained) + bare tokenizer."""
    import mmbert
    from mmbert.export.hf import save_pretrained
    from mmbert.model import build_model

    vocab = save_tokenizer(path, native_framing=False)
    torch.manual_seed(seed)
    cfg = mmbert.EncoderConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=2, local_attention=16, max_position_embeddings=512)
    save_pretrained(build_model(cfg, head="mlm"), path)
    return path


def make_bert(path: Path, kind: str = "bert") -> Path:
    """A tiny transformers BertForMaskedLM / XLMRobertaForMaskedLM directory + tokenizer."""
    import transformers as tf

    vocab = save_tokenizer(path, native_framing=True)
    torch.manual_seed(0)
    common = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, max_position_embeddings=520, pad_token_id=0)
    if kind == "bert":
        tf.BertForMaskedLM(tf.BertConfig(**common)).save_pretrained(str(path))
    else:
        tf.XLMRobertaForMaskedLM(tf.XLMRobertaConfig(**common, bos_token_id=2, eos_token_id=1)).save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def ours_dir(tmp_path_factory) -> Path:
    return make_ours(tmp_path_factory.mktemp("ours"))


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory) -> Path:
    return make_bert(tmp_path_factory.mktemp("bert"), "bert")


@pytest.fixture(scope="session")
def xlmr_dir(tmp_path_factory) -> Path:
    return make_bert(tmp_path_factory.mktemp("xlmr"), "xlm-roberta")


# ----------------------------------------------------------------------------- tiny eval data dir
WORDS = {"en": "cat dog park sport football city music film".split(),
         "de": "Katze Hund Park Sport Fußball Stadt Musik Film".split()}
SIB = ["science/technology", "travel", "politics", "sports", "health", "entertainment", "geography"]


def write_fixture_data(root: Path, n: int = 24, seed: int = 0) -> Path:
    """A tiny eval data directory with every dataset folder in its real format."""
    rng = random.Random(seed)
    sent = lambda lang, k=5: " ".join(rng.choice(WORDS[lang]) for _ in range(k))  # noqa: E731

    def w(rel: str, lines: list[str]) -> None:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("\n".join(lines) + "\n", encoding="utf-8")

    for lang, short in (("eng_Latn", "en"), ("deu_Latn", "de")):
        for split in ("train", "dev", "test"):
            rows = [f"{i}\t{SIB[i % 7]}\t{sent(short)}" for i in range(n)]
            w(f"sib200/{lang}/{split}.tsv", ["index_id\tcategory\ttext"] + rows)
    nli = ["entailment", "neutral", "contradiction"]
    for lang in ("en", "de"):
        w(f"xnli/dev-{lang}.tsv", [f"{sent(lang)}\t{sent(lang)}\t{nli[i % 3]}" for i in range(30)])
        w(f"pawsx/dev-{lang}.tsv", [f"{sent(lang)}\t{sent(lang)}\t{i % 2}" for i in range(30)])
        tags = ["B-PER", "I-PER", "O", "B-LOC", "O"]
        ner = []
        for i in range(n):
            ner += [f"{rng.choice(WORDS[lang])}\t{t}" for t in tags] + [""]
        w(f"wikiann/dev-{lang}.tsv", ner)
        if lang == "en":
            w("wikiann/train-en.tsv", ner)
    conllu = []
    for i in range(n):
        conllu += [f"# sent_id = {i}", "1-2\tdon't\t_\t_\t_\t_\t_\t_\t_\t_",
                   "1\tdo\tdo\tAUX\t_\t_\t0\troot\t_\t_", "2\tn't\tnot\tPART\t_\t_\t1\tadvmod\t_\t_",
                   "2.1\tgo\tgo\tVERB\t_\t_\t_\t_\t0:root\t_", "3\tcat\tcat\tNOUN\t_\t_\t1\tobj\t_\t_", ""]
    for split in ("dev", "test"):
        w(f"ud/UD_English-EWT/en_ewt-ud-{split}.conllu", conllu)
    w("ud/UD_German-GSD/de_gsd-ud-test.conllu", conllu)
    w("glue/sst2/train.tsv", ["sentence\tlabel"] + [f"{sent('en')} \t{i % 2}" for i in range(n)])
    w("glue/sst2/test.tsv", ["sentence\tlabel"] + [f"{sent('en')} \t{i % 2}" for i in range(n)])
    senti = ["negative", "neutral", "positive"]
    for language, short in (("english", "en"), ("javanese", "de")):
        for split in ("train", "valid", "test"):
            w(f"nusax/sentiment/{language}/{split}.csv",
              ["id,text,label"] + [f'{i},"{sent(short)}, quoted",{senti[i % 3]}' for i in range(n)])
    for xxx, short in (("deu", "de"), ("fra", "de")):
        w(f"tatoeba/tatoeba.{xxx}-eng.{xxx}", [sent(short) for _ in range(n)])
        w(f"tatoeba/tatoeba.{xxx}-eng.eng", [sent("en") for _ in range(n)])
    import json

    for lang in ("en", "de"):
        paras = [{"context": sent(lang, 12), "qas": [{"id": f"{k}-{j}", "question": sent(lang, 4),
                                                    "answers": [{"answer_start": 0, "text": "x"}]} for j in range(3)]}
                 for k in range(4)]
        w(f"xquad/xquad.{lang}.json", [json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": paras}]})])
    return root


@pytest.fixture
def fixture_data(tmp_path) -> Path:
    return write_fixture_data(tmp_path / "evaldata")
