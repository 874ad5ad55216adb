"""To and from Hugging Face: one literal name table, a config.json writer, loaders for both dialects.

Our parameter names ARE transformers' ModernBERT names (model/encoder.py), so the table below is
the identity — it is still written out, and tested in both directions, so a rename on either side
fails loudly instead of silently dropping weights.

    python -c "import mmbert; m = mmbert.from_pretrained('answerdotai/ModernBERT-base'); mmbert.save_pretrained(m, 'out/mb')"

A model directory (ours and our export: the same layout) holds `config.json` (transformers'
ModernBERT dialect), `model.safetensors` (a tied `decoder.weight` is not stored; an untied one is) and, when a
tokenizer is attached, its files. transformers checkpoints may instead hold
`model.safetensors.index.json` shards or `pytorch_model.bin` (read with weights_only=True).
Every directory we write also gets README.md (model card) and the sentence-transformers files
(export/card.py).
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import torch

from mmbert.export.card import read_card, write_card_files
from mmbert.model.config import ConfigError, EncoderConfig
from mmbert.model.encoder import HEADS, build_model
from mmbert.tokenizer import load_tokenizer
from mmbert.utils import RunLock, atomic_write, publish_dir

# ----------------------------------------------------------------------------- the name table
# (ours, transformers') for the bare encoder; {i} is the layer index. Headed models prefix "model.".
ENCODER_NAMES: list[tuple[str, str]] = [
    ("embeddings.tok_embeddings.weight", "embeddings.tok_embeddings.weight"),
    ("embeddings.norm.weight", "embeddings.norm.weight"),
    ("embeddings.norm.bias", "embeddings.norm.bias"),  # only when norm_bias
    ("layers.{i}.attn_norm.weight", "layers.{i}.attn_norm.weight"),  # absent in layer 0 (identity)
    ("layers.{i}.attn_norm.bias", "layers.{i}.attn_norm.bias"),
    ("layers.{i}.attn.Wqkv.weight", "layers.{i}.attn.Wqkv.weight"),
    ("layers.{i}.attn.Wqkv.bias", "layers.{i}.attn.Wqkv.bias"),
    ("layers.{i}.attn.Wo.weight", "layers.{i}.attn.Wo.weight"),
    ("layers.{i}.attn.Wo.bias", "layers.{i}.attn.Wo.bias"),
    ("layers.{i}.mlp_norm.weight", "layers.{i}.mlp_norm.weight"),
    ("layers.{i}.mlp_norm.bias", "layers.{i}.mlp_norm.bias"),
    ("layers.{i}.mlp.Wi.weight", "layers.{i}.mlp.Wi.weight"),
    ("layers.{i}.mlp.Wi.bias", "layers.{i}.mlp.Wi.bias"),
    ("layers.{i}.mlp.Wo.weight", "layers.{i}.mlp.Wo.weight"),
    ("layers.{i}.mlp.Wo.bias", "layers.{i}.mlp.Wo.bias"),
    ("final_norm.weight", "final_norm.weight"),
    ("final_norm.bias", "final_norm.bias"),
]
HEAD_NAMES: list[tuple[str, str]] = [
    ("head.dense.weight", "head.dense.weight"),
    ("head.dense.bias", "head.dense.bias"),
    ("head.norm.weight", "head.norm.weight"),
    ("head.norm.bias", "head.norm.bias"),
    ("decoder.weight", "decoder.weight"),  # tied to embeddings.tok_embeddings.weight
    ("decoder.bias", "decoder.bias"),
    ("classifier.weight", "classifier.weight"),
    ("classifier.bias", "classifier.bias"),
]
TIED = {"decoder.weight": "model.embeddings.tok_embeddings.weight"}  # when config.tie_word_embeddings


def _tied(model: torch.nn.Module) -> dict[str, str]:
    """The tied names of this model: TIED for a tied MLM model, nothing when the decoder is untied."""
    return TIED if getattr(model.config, "tie_word_embeddings", True) else {}
ARCHITECTURES = {"mlm": "ModernBertForMaskedLM", "none": "ModernBertModel",
                 "sequence-classification": "ModernBertForSequenceClassification",
                 "token-classification": "ModernBertForTokenClassification"}


def _compile(table: list[tuple[str, str]], prefix: str) -> list[tuple[re.Pattern, str]]:
    out = []
    for ours, theirs in table:
        pat = re.compile("^" + re.escape(prefix + ours).replace(re.escape("{i}"), r"(\d+)") + "$")
        out.append((pat, prefix + theirs))
    return out


def _rename(name: str, table: list[tuple[re.Pattern, str]]) -> str | None:
    for pat, target in table:
        m = pat.match(name)
        if m:
            return target.replace("{i}", m.group(1)) if m.groups() else target
    return None


def _tables(head: str) -> tuple[list, list]:
    """(ours → theirs, theirs → ours) compiled tables for a head type."""
    prefix = "" if head == "none" else "model."
    fwd = _compile(ENCODER_NAMES, prefix) + ([] if head == "none" else _compile(HEAD_NAMES, ""))
    inv = _compile([(b, a) for a, b in ENCODER_NAMES], prefix) + (
        [] if head == "none" else _compile([(b, a) for a, b in HEAD_NAMES], ""))
    return fwd, inv


def to_hf_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Our state dict under transformers' names, a tied decoder weight left out (transformers re-ties);
    an untied decoder is written as `decoder.weight`."""
    fwd, _ = _tables(model.head_type)
    tied = _tied(model)
    out = {}
    for name, t in model.state_dict().items():
        if name in tied:
            continue
        hf = _rename(name, fwd)
        if hf is None:
            raise KeyError(f"parameter {name!r} has no entry in the export name table (mmbert/export/hf.py)")
        out[hf] = t.detach().contiguous()
    return out


def _normalise_prefix(sd: dict[str, torch.Tensor], head: str) -> dict[str, torch.Tensor]:
    """transformers stores the bare ModernBertModel without the "model." prefix and headed models with
    it; accept either for any head we build."""
    has_prefix = any(k.startswith("model.") for k in sd)
    if head == "none":
        return {k[len("model."):]: v for k, v in sd.items() if k.startswith("model.")} if has_prefix else sd
    if has_prefix:
        return sd
    encoder_keys = ("embeddings.", "layers.", "final_norm.")
    return {("model." + k if k.startswith(encoder_keys) else k): v for k, v in sd.items()}


def load_hf_state_dict(model: torch.nn.Module, sd: dict[str, torch.Tensor], source: str = "checkpoint") -> list[str]:
    """Copy a transformers-named state dict into our model. Encoder weights must all be present;
    head weights missing from a checkpoint of another head type stay freshly initialised (returned,
    and warned about, like transformers does); keys we do not know are an error."""
    head = model.head_type
    sd = _normalise_prefix(sd, head)
    _, inv = _tables(head)
    ours = model.state_dict()
    tied = _tied(model)
    other_heads = ("head.", "decoder.", "classifier.")
    mapped, unexpected = {}, []
    for k, v in sd.items():
        name = _rename(k, inv)
        if name in tied:
            continue  # tied: the embeddings are the decoder (as transformers re-ties them)
        if name is None or name not in ours:
            if k.startswith(other_heads) or k.startswith("model.rotary_emb") or "rotary_emb" in k:
                continue  # another head's weights (e.g. an MLM checkpoint loaded for classification)
            unexpected.append(k)
            continue
        if tuple(v.shape) != tuple(ours[name].shape):
            raise ValueError(f"{source}: {k} has shape {tuple(v.shape)} but the model built from config.json "
                             f"expects {tuple(ours[name].shape)}; the weights do not match the config")
        mapped[name] = v
    if unexpected:
        raise ValueError(f"{source}: unexpected weights {unexpected[:5]}{' …' if len(unexpected) > 5 else ''} "
                         f"({len(unexpected)} in all) — not a ModernBERT checkpoint of this shape; check the "
                         f"path or the config")
    missing = [n for n in ours if n not in mapped and n not in tied]
    body_missing = [n for n in missing if not n.startswith(other_heads)]
    if body_missing:
        raise ValueError(f"{source}: missing encoder weights {body_missing[:5]}"
                         f"{' …' if len(body_missing) > 5 else ''} ({len(body_missing)} in all) — the checkpoint "
                         f"is incomplete or for another architecture")
    if missing:
        warnings.warn(f"{source}: no weights for {missing} — freshly initialised (train this head before use)")
    with torch.no_grad():
        for name, v in mapped.items():
            ours[name].copy_(v)
    return missing


# ----------------------------------------------------------------------------- reading directories
def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights of a model directory: model.safetensors, sharded safetensors, or pytorch_model.bin
    (weights_only=True: no pickle code runs)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    single, index, binf = path / "model.safetensors", path / "model.safetensors.index.json", path / "pytorch_model.bin"
    try:
        if single.exists():
            return load_file(str(single))
        if index.exists():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            sd = {}
            for f in files:
                sd.update(load_file(str(path / f)))
            return sd
    except (SafetensorError, OSError, ValueError, KeyError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: the weights file is corrupted or truncated ({e}); re-download or re-export "
                         f"the model") from e
    if binf.exists():
        try:
            return torch.load(str(binf), map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"{binf}: cannot be read safely with weights_only=True ({e}); convert it to "
                             f"safetensors") from e
    raise FileNotFoundError(f"{path}: no weights found (expected model.safetensors, model.safetensors.index.json "
                            f"or pytorch_model.bin); is this a model directory?")


def read_config(path: str | Path) -> EncoderConfig:
    cfg = Path(path) / "config.json"
    if not cfg.exists():
        raise FileNotFoundError(f"{path}: no config.json; expected a mmbert or transformers ModernBERT directory")
    try:
        d = json.loads(cfg.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{cfg}: not valid JSON ({e})") from e
    try:
        return EncoderConfig.from_hf_dict(d)
    except ConfigError as e:
        raise ConfigError(f"{cfg}: {e}") from None


def _resolve(path: str | Path) -> Path:
    p = Path(path)
    if p.exists():
        return p
    s = str(path)
    if s.count("/") == 1 and not s.startswith((".", "/")):  # looks like a hub id: "org/name"
        try:
            from huggingface_hub import snapshot_download
        except ImportError as e:  # pragma: no cover
            raise FileNotFoundError(f"{s}: not a local directory, and huggingface_hub is not installed") from e
        try:
            return Path(snapshot_download(s, allow_patterns=["*.json", "*.safetensors", "tokenizer*", "README.md",
                                                             "special_tokens_map.json"]))
        except Exception as e:  # offline, unknown repo, …
            raise FileNotFoundError(f"{s}: not a local directory and could not be fetched from the hub ({e})") from e
    raise FileNotFoundError(f"{s}: no such model directory")


def from_pretrained(path: str | Path, head: str = "mlm", num_labels: int | None = None,
                    dtype: torch.dtype | None = None, **config_overrides) -> torch.nn.Module:
    """Our model from one of our directories, a transformers ModernBERT directory, or a hub id."""
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; choose one of: {', '.join(HEADS)}")
    p = _resolve(path)
    config = read_config(p)
    if num_labels is not None and num_labels != config.num_labels:
        config = config.replace(num_labels=num_labels, id2label=None)
    if config_overrides:
        config = config.replace(**config_overrides)
    model = build_model(config, head)
    load_hf_state_dict(model, read_state_dict(p), source=str(p))
    if (p / "tokenizer.json").exists():
        model.tokenizer = load_tokenizer(p)
    model.card = read_card(p)  # carried into the next export (languages, licence, lineage)
    if dtype is not None:
        model.to(dtype)
    return model.eval()


def export_hf(model: str | Path, out_dir: str | Path, *, head: str = "mlm", dtype: str = "fp32") -> torch.nn.Module:
    """`mmbert export`: load `model` (ours, a transformers ModernBERT directory or a hub id) with `head`
    and write it to `out_dir` as a Hugging Face directory with weights in `dtype` (fp32, bf16, fp16;
    torch spellings accepted). Returns the model as written."""
    from mmbert.utils import canonical_dtype

    torch_dtype = getattr(torch, {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[
        canonical_dtype(dtype, ("fp32", "bf16", "fp16"))])
    model = from_pretrained(model, head=head, dtype=torch_dtype)
    save_pretrained(model, out_dir)
    return model


# ----------------------------------------------------------------------------- writing directories
# files that must come from one save: a new save never keeps an old one beside its own
MODEL_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def save_pretrained(model: torch.nn.Module, path: str | Path, card=None) -> Path:
    """Write config.json + model.safetensors (+ tokenizer files) + the model card and
    sentence-transformers files (export/card.py; `card` defaults to the one the model was loaded
    with) as one step: the directory is built beside `path` and swapped into place whole
    (utils.publish_dir), so a reader — or a crash — never sees new weights with an old config. Other
    files already in `path` are kept; the write holds `path`'s lock (utils.RunLock)."""
    path = Path(path)
    with RunLock(path), publish_dir(path, carry=_not_model_file) as tmp:
        write_model_files(model, tmp, card=card)
    return path


def _not_model_file(name: str) -> bool:
    return name not in MODEL_FILES and not name.endswith((".safetensors", ".bin"))


def write_model_files(model: torch.nn.Module, path: Path, card=None) -> Path:
    """config.json + model.safetensors (+ tokenizer files) + card files into an existing (temp) directory."""
    from safetensors.torch import save_file

    path = Path(path)
    cfg = model.config.to_hf_dict()
    cfg["architectures"] = [ARCHITECTURES[model.head_type]]
    cfg["torch_dtype"] = str(next(model.parameters()).dtype).replace("torch.", "")
    sd = {k: v.cpu() for k, v in to_hf_state_dict(model).items()}
    atomic_write(path / "model.safetensors", lambda t: save_file(sd, t, metadata={"format": "pt"}))
    atomic_write(path / "config.json", json.dumps(cfg, indent=2, sort_keys=True))
    tok = getattr(model, "tokenizer", None)
    if tok is not None:
        tok.save(path, model_max_length=model.config.max_position_embeddings)
    write_card_files(path, cfg, card if card is not None else getattr(model, "card", None))
    return path
