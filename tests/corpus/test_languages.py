"""Language-code mapping and script detection on the tricky cases from Debian locales and the UDHR."""

import pytest

from mmbert.corpus.languages import (UnknownLanguageError, detect_script, parse_code, resolve_tag,
                                     script_share, split_tag)


@pytest.mark.parametrize("code,tag", [
    ("pt_BR", "por_Latn"), ("pt-BR", "por_Latn"), ("de_DE.UTF-8", "deu_Latn"),
    ("zh_CN", "cmn_Hani"), ("zh_TW", "cmn_Hani"), ("zh-Hant", "cmn_Hani"), ("cmn_hant", "cmn_Hani"),
    ("sr", "srp_Cyrl"), ("sr@latin", "srp_Latn"), ("sr-Latn", "srp_Latn"), ("uz@cyrillic", "uzn_Cyrl"),
    ("khk_mong", "khk_Mong"), ("mn", "khk_Cyrl"), ("tzm_tfng", "tzm_Tfng"), ("deu_1996", "deu_Latn"),
    ("ja", "jpn_Jpan"), ("ko", "kor_Hang"), ("am", "amh_Ethi"), ("th", "tha_Thai"), ("hi", "hin_Deva"),
    # macrolanguage folding (FineWeb-2's individual languages)
    ("ar", "arb_Arab"), ("fa", "pes_Arab"), ("no", "nob_Latn"), ("et", "ekk_Latn"), ("lv", "lvs_Latn"),
    ("sw", "swh_Latn"), ("ms", "zsm_Latn"), ("zho", "cmn_Hani"), ("nb", "nob_Latn"), ("en_GB", "eng_Latn"),
])
def test_resolve_tag(code, tag):
    assert resolve_tag(code) == tag


@pytest.mark.parametrize("code", ["und", "C", "qaa", "xyz", "", "123", "mul"])
def test_unusable_codes_raise(code):
    with pytest.raises(UnknownLanguageError):
        resolve_tag(code)


def test_parse_code_parts():
    assert parse_code("zh_TW") == ("zh", "Hant", "TW")
    assert parse_code("sr@latin") == ("sr", "Latn", None)
    assert parse_code("aka_akuapem") == ("aka", None, None)
    assert parse_code("es-419") == ("es", None, "419")


def test_script_from_text_when_code_has_none():
    # An unspecified code takes the script of the text (a Latin-script Serbian declaration).
    assert resolve_tag("srp", "Sva ljudska bića rađaju se slobodna") == "srp_Latn"
    assert resolve_tag("srp", "Сва људска бића рађају се слободна") == "srp_Cyrl"
    # An explicit script wins over the text.
    assert resolve_tag("khk_mong", "Хүн бүр") == "khk_Mong"


@pytest.mark.parametrize("text,script", [
    ("Hello world", "Latn"), ("Привет, мир", "Cyrl"), ("مرحبا بالعالم", "Arab"), ("नमस्ते दुनिया", "Deva"),
    ("你好，世界", "Hani"), ("これは日本語の文です", "Jpan"), ("สวัสดีชาวโลก", "Thai"), ("ሰላም ለዓለም", "Ethi"),
    ("ⴰⵣⵓⵍ ⴰⴼⵍⴰⵏ", "Tfng"), ("안녕하세요 世界", "Hang"), ("ᠮᠣᠩᠭᠣᠯ", "Mong"), ("1234 !?", None),
])
def test_detect_script(text, script):
    assert detect_script(text) == script


def test_script_share():
    assert script_share("мир мир", "Cyrl") == 1.0
    assert script_share("Hello мир", "Cyrl") == 3 / 8  # exact: 3 of 8 letters, and 3/8 is exact in binary
    assert script_share("これは日本語", "Jpan") == 1.0
    assert script_share("12345", "Latn") == 0.0


def test_split_tag():
    assert split_tag("deu_Latn") == ("deu", "Latn")
    with pytest.raises(ValueError, match="deu_Latn"):
        split_tag("de")
