"""Tokenizer: trained in the test on an inline multilingual text; round trips in nine scripts with no
<unk>; special ids and framing; save → AutoTokenizer; loading a foreign tokenizer.json."""

import json

import pytest
from tokenizers import Tokenizer as HFTokenizer, models, pre_tokenizers

from mmbert.export.hf import save_pretrained
from mmbert.tokenizer import (load_tokenizer, sampling_budgets, train_tokenizer, train_tokenizer_from_texts,
                              TokenizerError)

SAMPLES = {
    "Latin": "Alle Menschen sind frei und gleich an Würde und Rechten geboren. Ça va très bien, merci!",
    "Cyrillic": "Все люди рождаются свободными и равными в своем достоинстве и правах.",
    "Arabic": "يولد جميع الناس أحرارًا متساوين في الكرامة والحقوق.",
    "Devanagari": "सभी मनुष्यों को गौरव और अधिकारों के मामले में जन्मजात स्वतन्त्रता प्राप्त है।",
    "Han": "人人生而自由，在尊严和权利上一律平等。",
    "Japanese": "すべての人間は、生まれながらにして自由であり、かつ、尊厳と権利とについて平等である。",
    "Thai": "มนุษย์ทั้งหลายเกิดมามีอิสระและเสมอภาคกันในเกียรติศักด[เกียรติศักดิ์]และสิทธิ",
    "Ethiopic": "የሰው ልጅ ሁሉሲወለድ ነጻና በክብርና በመብትም እኩልነት ያለው ነው።",
    "Tifinagh": "ⵉⵍⵓⵍ ⵎⵉⴷⴷⵏ ⴰⴽⴽ ⴷ ⵉⵍⴻⵍⵍⵉⵜⵏ ⵎⴳⴰⴷⴷⴰⵏ ⵖ ⵡⴰⵢⵢⴰ ⴷ ⵉⵣⵔⴼⴰⵏ.",
}


@pytest.fixture(scope="module")
def tok():
    # Only some scripts are in the training text: the others must still round-trip via byte fallback.
    texts = [SAMPLES["Latin"], SAMPLES["Cyrillic"], SAMPLES["Han"], SAMPLES["Arabic"]] * 30
    return train_tokenizer_from_texts(texts, 640)


def test_special_ids_and_size(tok):
    assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.unk_id, tok.mask_id) == (0, 1, 2, 3, 4)
    assert tok.vocab_size == 640 and tok.vocab_size % 64 == 0
    assert [tok.hf.id_to_token(i) for i in range(5)] == ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    assert {0, 1, 2, 3, 4} <= tok.special_ids


@pytest.mark.parametrize("script", sorted(SAMPLES))
def test_round_trip_without_unknown(tok, script):
    text = SAMPLES[script]
    ids = tok.encode(text)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert tok.unk_id not in ids
    assert tok.decode(ids) == text
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_whitespace_case_digits_emoji_round_trip(tok):
    for text in ["  two  spaces\tand tab\nnew line", "UPPER lower MiXeD", "x² ≠ 12345 😀 𝔘", " leading"]:
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode("ABC") != tok.encode("abc")  # no lowercasing
    toks = tok.hf.encode("12345", add_special_tokens=False).tokens
    assert toks == ["1", "2", "3", "4", "5"]


def test_pair_framing_and_batch(tok):
    enc = tok.hf.encode("Alle Menschen", "Все люди")
    assert enc.ids[0] == tok.bos_id and enc.ids.count(tok.eos_id) == 2 and enc.ids[-1] == tok.eos_id
    batch = tok.encode_batch([SAMPLES["Latin"], SAMPLES["Thai"]])
    assert batch == [tok.encode(SAMPLES["Latin"]), tok.encode(SAMPLES["Thai"])]


def test_save_load_and_autotokenizer(tok, tmp_path):
    tok.save(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {"tokenizer.json", "tokenizer_config.json",
                                                    "special_tokens_map.json"}
    again = load_tokenizer(tmp_path)
    assert again.encode(SAMPLES["Ethiopic"]) == tok.encode(SAMPLES["Ethiopic"])
    assert (again.pad_id, again.bos_id, again.eos_id, again.mask_id) == (0, 2, 1, 4)
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    at = AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(at, PreTrainedTokenizerFast)
    assert at(SAMPLES["Tifinagh"])["input_ids"] == tok.encode(SAMPLES["Tifinagh"])
    assert (at.pad_token_id, at.mask_token_id, at.cls_token_id, at.sep_token_id) == (0, 4, 2, 1)
    assert at.decode(at(SAMPLES["Japanese"])["input_ids"], skip_special_tokens=True) == SAMPLES["Japanese"]


def test_load_foreign_tokenizer_maps_special_tokens(tmp_path):
    # A BERT-style WordLevel tokenizer with [CLS]/[SEP]/[PAD]/[MASK]/[UNK] at other ids.
    vocab = {"hello": 0, "world": 1, "[UNK]": 2, "[CLS]": 3, "[SEP]": 4, "[PAD]": 5, "[MASK]": 6}
    hf = HFTokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    hf.add_special_tokens(["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"])
    hf.save(str(tmp_path / "tokenizer.json"))
    t = load_tokenizer(tmp_path / "tokenizer.json")
    assert (t.pad_id, t.bos_id, t.eos_id, t.unk_id, t.mask_id) == (5, 3, 4, 2, 6)
    assert t.encode("hello world") == [3, 0, 1, 4]
    # Without a mask token it cannot serve an MLM encoder: one clear error.
    del vocab["[MASK]"]
    hf2 = HFTokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    hf2.save(str(tmp_path / "nomask.json"))
    with pytest.raises(TokenizerError, match="mask"):
        load_tokenizer(tmp_path / "nomask.json")
    (tmp_path / "corrupt.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="not a valid tokenizer.json"):
        load_tokenizer(tmp_path / "corrupt.json")
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path / "missing")


def test_sampling_budgets_temperature_and_caps():
    sizes = {"big": 1_000_000, "mid": 10_000, "small": 100}
    b = sampling_budgets(sizes, 30_000, 0.3)
    assert b["small"] == 100  # capped at what it has
    assert sum(b.values()) == pytest.approx(30_000, abs=3)  # each of 3 budgets is truncated to an int: < 1 short each
    # τ < 1 flattens: the big language gets far less than its 99% share of the budget.
    assert b["big"] / sum(b.values()) < 0.8 and b["mid"] > 0.25 * b["big"]
    flat = sampling_budgets(sizes, 15_000, 0.0)  # τ = 0: equal shares, small's surplus shared
    assert flat == {"big": 7450, "mid": 7450, "small": 100}
    assert sampling_budgets(sizes, 10**9, 0.3) == sizes


def test_vocab_size_must_be_multiple_of_64():
    with pytest.raises(ValueError, match="multiple of 64"):
        train_tokenizer_from_texts(["abc"], 1000)


def test_train_from_corpus_dir_writes_reports(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    for tag, text in [("deu_Latn", SAMPLES["Latin"]), ("tha_Thai", SAMPLES["Thai"]), ("amh_Ethi", SAMPLES["Ethiopic"])]:
        (corpus / tag).mkdir(parents=True)
        (corpus / tag / "a.jsonl").write_text(
            "".join(json.dumps({"text": f"{text} {i}"}, ensure_ascii=False) + "\n" for i in range(20)), encoding="utf-8")
    (corpus / "deu_Latn" / "b.jsonl").write_bytes(b'{"text": "ok"}\n' * 10 + b"\x00" * 4)  # binary
    tok = train_tokenizer(corpus, 512, tmp_path / "tok", max_chars=50_000, progress=False)
    # skipped files are reported as `data prepare` reports them, and recorded
    assert "tokenizer: skipped binary-file ×1 (e.g. " in capsys.readouterr().err
    assert json.loads((tmp_path / "tok" / "training_mix.json").read_text())["skipped"] == {"binary-file": 1}
    rep = json.loads((tmp_path / "tok" / "fertility.json").read_text())
    assert set(rep) == {"deu_Latn", "tha_Thai", "amh_Ethi"}
    assert all(v["unk"] == 0 and 0 < v["tokens_per_char"] <= 4 for v in rep.values())
    assert "tokens/char" in (tmp_path / "tok" / "fertility.md").read_text()
    assert load_tokenizer(tmp_path / "tok").encode(SAMPLES["Thai"]) == tok.encode(SAMPLES["Thai"])


def test_fertility_counts(tok):
    from mmbert.tokenizer import fertility
    seen = fertility(tok, [SAMPLES["Latin"]])
    assert seen["chars"] == len(SAMPLES["Latin"]) and seen["words"] == len(SAMPLES["Latin"].split())
    assert seen["tokens"] == len(tok.encode(SAMPLES["Latin"], add_special_tokens=False))
    assert seen["byte_fallback_share"] == 0 and seen["unk"] == 0
    # Ethiopic was not in the training text: it is all byte fallback (3 UTF-8 bytes per syllable).
    unseen = fertility(tok, ["ሰላም"])
    assert unseen["tokens"] == 9 and unseen["byte_fallback_share"] == 1.0


def test_mask_absorbs_the_space_before_it(tok):
    # as in the released mmBERT/ModernBERT tokenizers: no lone "▁" piece before <mask>
    ids = tok.encode("Menschen sind <mask>.", add_special_tokens=False)
    pieces = [tok.hf.id_to_token(i) for i in ids]
    i = ids.index(tok.mask_id)
    assert pieces[i - 1] != "▁" and pieces[i - 1].endswith("sind"), pieces
    assert ids == tok.encode("Menschen sind<mask>.", add_special_tokens=False)
    assert tok.decode(tok.encode("Menschen sind <mask>."), skip_special_tokens=False).count("<mask>") == 1


def test_model_directory_tokenizer_max_length_is_the_models(tok, tmp_path):
    import warnings

    import mmbert
    from transformers import AutoTokenizer

    cfg = mmbert.EncoderConfig.from_preset("tiny", vocab_size=640, num_hidden_layers=1, max_position_embeddings=96)
    model = mmbert.model.build_model(cfg)
    model.tokenizer = tok
    save_pretrained(model, tmp_path)
    at = AutoTokenizer.from_pretrained(tmp_path)
    assert at.model_max_length == 96
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert len(at(SAMPLES["Latin"] * 20, truncation=True)["input_ids"]) == 96
