"""export/card.py: every export explains and loads itself — README.md model card with valid YAML
front matter, sentence-transformers files (SentenceTransformer loads with mean pooling and no
"creating a new one" warning), cards carried through export / merge / init-from, and
`--push-to-hub` against a local HTTP stand-in of the Hub (no network)."""

import base64
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
import yaml

from mmbert.cli import main
from mmbert.export.card import CardInfo, card_metadata, hub_language, read_card
from mmbert.export.hf import save_pretrained
from mmbert.model import EncoderConfig, build_model
from parity_tol import assert_fp32_close

TEXTS = ["the cat sat on the mat", "der Hund lief weit weg", "le chat noir dort", "a quick brown fox"]


def front_matter(path):
    text = (path / "README.md").read_text()
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n")[1])
    assert isinstance(meta, dict)
    return meta, text


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    from mmbert.tokenizer import train_tokenizer_from_texts

    root = tmp_path_factory.mktemp("card")
    tok = train_tokenizer_from_texts(TEXTS * 20, 512)
    cfg = EncoderConfig.from_preset("tiny", vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=96,
                                    num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=128)
    torch.manual_seed(0)
    m = build_model(cfg)
    m.tokenizer = tok
    save_pretrained(m, root / "model", card=CardInfo(languages=["eng_Latn", "deu_Latn", "fra_Latn", "zxx_Zyyy"],
                                                    tokens_seen=12345, recipe="cpu-demo"))
    return root / "model"


def test_card_front_matter_is_valid_hub_metadata(export_dir):
    from huggingface_hub import ModelCard

    meta, text = front_matter(export_dir)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "fill-mask"
    assert meta["license"] == "apache-2.0" and "mmbert" in meta["tags"]
    assert meta["language"] == ["de", "en", "fr"]  # from the training tags; zxx (no language) left out
    assert "base_model" not in meta  # trained from scratch
    assert ModelCard.load(export_dir / "README.md").data.to_dict() == meta  # the Hub library reads it alike
    assert "12,345" in text and "cpu-demo" in text and "SentenceTransformer(" in text


def test_sentence_transformer_loads_with_mean_pooling_and_no_warning(export_dir, caplog):
    from sentence_transformers import SentenceTransformer

    from mmbert.inference import embed
    import mmbert

    with caplog.at_level(logging.WARNING):
        st = SentenceTransformer(str(export_dir), device="cpu")
    assert not [r for r in caplog.records if "creating a new one" in r.getMessage()]
    pooling = st[1].get_config_dict()
    assert pooling["pooling_mode_mean_tokens"] and not pooling["pooling_mode_cls_token"]
    assert st.get_sentence_embedding_dimension() == 64
    ours = embed(mmbert.from_pretrained(export_dir, head="none"), TEXTS, dtype="fp32")
    theirs = torch.as_tensor(st.encode(TEXTS))
    # transformers' padded ModernBertModel vs our packed path, fp32: the derived parity bound of
    # tests/parity_tol.py (widest reduction: max_position_embeddings 128 ≥ intermediate 96; 2 layers + 2)
    assert_fp32_close(theirs, ours, widest=128, depth=4)


def test_export_merge_and_init_from_carry_the_card(export_dir, tmp_path):
    assert main(["export", "--model", str(export_dir), "--out", str(tmp_path / "e"), "--dtype", "bfloat16"]) == 0
    meta, _ = front_matter(tmp_path / "e")
    assert meta["language"] == ["de", "en", "fr"]  # read from the source card, written again
    assert (tmp_path / "e" / "1_Pooling" / "config.json").is_file()
    assert main(["merge", "--models", str(export_dir), str(tmp_path / "e"), "--out", str(tmp_path / "m")]) == 0
    meta, text = front_matter(tmp_path / "m")
    assert meta["language"] == ["de", "en", "fr"] and "merge" in meta["tags"]
    assert "Merged from" in text and str(export_dir) in text
    assert "base_model" not in meta  # local sources are named in the body; the Hub only takes repo ids
    assert json.loads((tmp_path / "m" / "modules.json").read_text())[1]["path"] == "1_Pooling"
    assert main(["init-from", "--model", str(export_dir), "--out", str(tmp_path / "g"), "--preset", "tiny"]) == 0
    meta, text = front_matter(tmp_path / "g")
    assert meta["language"] == ["de", "en", "fr"] and "Initialised from" in text
    assert json.loads((tmp_path / "g" / "1_Pooling" / "config.json").read_text())["word_embedding_dimension"] == \
        json.loads((tmp_path / "g" / "config.json").read_text())["hidden_size"]


def test_hub_sources_become_base_model():
    meta = card_metadata(CardInfo(base_models=["answerdotai/ModernBERT-base", "/local/dir"], relation="finetune"))
    assert meta["base_model"] == ["answerdotai/ModernBERT-base"] and meta["base_model_relation"] == "finetune"
    assert hub_language("zho_Hans") == "zh" and hub_language("yor_Latn") == "yo" and hub_language("und") is None
    assert read_card("/nonexistent") is None


def test_first_token_pooling_round_trips(tmp_path):
    from mmbert.export.card import write_card_files

    cfg = {"hidden_size": 48, "max_position_embeddings": 256, "num_hidden_layers": 2, "vocab_size": 100}
    write_card_files(tmp_path, cfg, CardInfo(pooling="first", languages=["yor_Latn"]))
    pool = json.loads((tmp_path / "1_Pooling" / "config.json").read_text())
    assert pool["pooling_mode_cls_token"] and not pool["pooling_mode_mean_tokens"]
    assert pool["word_embedding_dimension"] == 48
    assert json.loads((tmp_path / "sentence_bert_config.json").read_text())["max_seq_length"] == 256
    card = read_card(tmp_path)
    assert card.pooling == "first" and card.languages == ["yo"]
    with pytest.raises(ValueError, match="mean or first"):
        write_card_files(tmp_path, cfg, CardInfo(pooling="max"))


# ----------------------------------------------------------------------------- the Hub stand-in
class FakeHub:
    """Just enough of the Hub's HTTP API for huggingface_hub.upload_folder: create the repo,
    validate the README's YAML (errors → 400, as the Hub does), pre-upload (every file "regular",
    i.e. inline in the commit), and the NDJSON commit, whose files are kept."""

    def __init__(self):
        self.files, self.tokens, self.validated = {}, set(), []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def reply(self, code, obj):
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                self.reply(404, {"error": "not in the stand-in"})

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                hub.tokens.add(self.headers.get("authorization"))
                if self.path == "/api/repos/create":
                    return self.reply(200, {"url": f"{hub.url}/{json.loads(body)['organization']}/x"})
                if self.path == "/api/validate-yaml":
                    content = json.loads(body)["content"]
                    meta = yaml.safe_load(content.split("---\n")[1])
                    hub.validated.append(meta)
                    bad = [k for k in ("library_name", "pipeline_tag", "license") if k not in meta]
                    if bad:
                        return self.reply(400, {"errors": [{"message": f"missing {bad}"}]})
                    return self.reply(200, {"errors": [], "warnings": []})
                if "/preupload/" in self.path:
                    files = json.loads(body)["files"]
                    return self.reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                                      for f in files], "commitOid": "0" * 40})
                if "/commit/" in self.path:
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            hub.files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    return self.reply(200, {"commitUrl": f"{hub.url}/org/x/commit/{'a' * 40}",
                                            "commitOid": "a" * 40, "pullRequestUrl": None})
                self.reply(404, {"error": f"{self.path} not in the stand-in"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def fake_hub(monkeypatch):
    hub = FakeHub()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_TOKEN", "hf_standin")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "ENDPOINT", hub.url)  # read at import time by the library
    yield hub
    hub.server.shutdown()


def test_push_to_hub_uploads_the_whole_directory(export_dir, tmp_path, fake_hub, capsys):
    assert main(["export", "--model", str(export_dir), "--out", str(tmp_path / "e"),
                 "--push-to-hub", "org/x"]) == 0
    local = {p.relative_to(tmp_path / "e").as_posix(): p.read_bytes() for p in (tmp_path / "e").rglob("*")
             if p.is_file()}
    assert fake_hub.files == local  # every file, byte for byte, README and 1_Pooling/ included
    assert fake_hub.validated[0]["pipeline_tag"] == "fill-mask"
    assert "Bearer hf_standin" in fake_hub.tokens
    assert "pushed" in capsys.readouterr().out
    # a failed push is one error line and leaves the local directory as written
    assert main(["export", "--model", str(export_dir), "--out", str(tmp_path / "f"), "--push-to-hub", "nota/repo/id"]) == 1
    assert "not a repo id" in capsys.readouterr().err and (tmp_path / "f" / "README.md").is_file()
