"""EncoderConfig: the one source of truth for the shape of a ModernBERT/mmBERT encoder.

Field names are Hugging Face's `ModernBertConfig` names, so `to_hf_dict()` / `from_hf_dict()`
are nearly identity. Named presets (`EncoderConfig.from_preset("mmbert-small")`) are Python
objects, not copied files.

    python -c "import mmbert; print(mmbert.EncoderConfig.from_preset('mmbert-base').num_parameters())"
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """An invalid configuration: the message names the field and how to fix it."""


@dataclass
class EncoderConfig:
    vocab_size: int = 256000
    hidden_size: int = 768
    intermediate_size: int = 1152
    num_hidden_layers: int = 22
    num_attention_heads: int = 12
    hidden_activation: str = "gelu"
    max_position_embeddings: int = 8192
    initializer_range: float = 0.02
    initializer_cutoff_factor: float = 2.0
    norm_eps: float = 1e-5
    norm_bias: bool = False
    global_attn_every_n_layers: int = 3
    local_attention: int = 128
    global_rope_theta: float = 160000.0
    local_rope_theta: float = 160000.0
    attention_bias: bool = False
    mlp_bias: bool = False
    decoder_bias: bool = True
    embedding_dropout: float = 0.0
    attention_dropout: float = 0.0
    mlp_dropout: float = 0.0
    # sequence-classification head (transformers' ModernBertForSequenceClassification)
    classifier_pooling: str = "mean"  # "mean" | "cls"
    classifier_dropout: float = 0.0
    classifier_bias: bool = False
    classifier_activation: str = "gelu"
    num_labels: int = 2
    # special tokens: mmBERT uses the Gemma 2 ids
    pad_token_id: int = 0
    eos_token_id: int = 1
    bos_token_id: int = 2
    cls_token_id: int = 2
    sep_token_id: int = 1
    unk_token_id: int | None = 3
    mask_token_id: int | None = 4
    tie_word_embeddings: bool = True
    # label names for classification heads, kept for export (id2label in HF terms)
    id2label: dict[int, str] | None = None

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(msg)

        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "max_position_embeddings", "global_attn_every_n_layers",
                     "local_attention"):
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool) and v > 0,
                 f"EncoderConfig.{name} must be a positive integer, got {v!r}")
        need(self.hidden_size % self.num_attention_heads == 0,
             f"EncoderConfig.hidden_size ({self.hidden_size}) is not divisible by "
             f"num_attention_heads ({self.num_attention_heads}); choose a head count that divides it")
        need(self.head_dim % 2 == 0,
             f"EncoderConfig head dim hidden_size/num_attention_heads = {self.head_dim} must be even "
             f"for rotary embeddings; change hidden_size or num_attention_heads")
        need(self.local_attention % 2 == 0,
             f"EncoderConfig.local_attention ({self.local_attention}) must be even (window of "
             f"local_attention//2 tokens on each side)")
        for name in ("global_rope_theta", "local_rope_theta", "norm_eps", "initializer_range"):
            need(float(getattr(self, name)) > 0, f"EncoderConfig.{name} must be > 0")
        for name in ("embedding_dropout", "attention_dropout", "mlp_dropout", "classifier_dropout"):
            v = getattr(self, name)
            need(0.0 <= v < 1.0, f"EncoderConfig.{name} must be in [0, 1), got {v}")
        need(self.hidden_activation in ("gelu", "gelu_python", "gelu_new", "gelu_pytorch_tanh"),
             f"EncoderConfig.hidden_activation {self.hidden_activation!r} is not supported; use 'gelu'")
        need(self.classifier_pooling in ("mean", "cls"),
             f"EncoderConfig.classifier_pooling must be 'mean' or 'cls', got {self.classifier_pooling!r}")
        for name in ("pad_token_id", "eos_token_id", "bos_token_id", "cls_token_id", "sep_token_id",
                     "unk_token_id", "mask_token_id"):
            v = getattr(self, name)
            need(v is None or 0 <= v < self.vocab_size,
                 f"EncoderConfig.{name}={v} is outside the vocabulary (vocab_size={self.vocab_size})")

    # ------------------------------------------------------------------ derivations
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def is_global_layer(self, layer_id: int) -> bool:
        return layer_id % self.global_attn_every_n_layers == 0

    @property
    def layer_types(self) -> list[str]:
        return ["full_attention" if self.is_global_layer(i) else "sliding_attention"
                for i in range(self.num_hidden_layers)]

    def num_parameters(self, include_embeddings: bool = True, head: str = "mlm") -> int:
        """Exact parameter count of the model `build_model(self, head)` creates (tied decoder once)."""
        h, i, L, V = self.hidden_size, self.intermediate_size, self.num_hidden_layers, self.vocab_size
        norm = h * (2 if self.norm_bias else 1)
        attn = h * 3 * h + h * h + (4 * h if self.attention_bias else 0)
        mlp = h * 2 * i + i * h + ((2 * i + h) if self.mlp_bias else 0)
        layer = attn + mlp + 2 * norm
        n = L * layer - norm  # layer 0 has an identity attn_norm
        n += norm + norm  # embedding norm, final norm
        if head == "mlm":
            n += h * h + norm + (V if self.decoder_bias else 0)
        if include_embeddings:
            n += V * h
        return n

    # ------------------------------------------------------------------ presets and I/O
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "EncoderConfig":
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)

    def replace(self, **changes: Any) -> "EncoderConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_hf_dict(self) -> dict[str, Any]:
        """config.json for transformers' ModernBERT, written in the legacy dialect that every
        transformers version since 4.48 reads (newer versions convert it to `rope_parameters`)."""
        d = self.to_dict()
        id2label = d.pop("id2label")
        d.pop("num_labels")
        d.update(model_type="modernbert", architectures=["ModernBertForMaskedLM"],
                 sparse_prediction=False, sparse_pred_ignore_index=-100,
                 classifier_pooling=self.classifier_pooling, repad_logits_with_grad=False,
                 deterministic_flash_attn=False, reference_compile=False)
        if id2label is not None:
            d["id2label"] = {str(k): v for k, v in id2label.items()}
            d["label2id"] = {v: int(k) for k, v in id2label.items()}
        else:
            d["id2label"] = {str(k): f"LABEL_{k}" for k in range(self.num_labels)}
            d["label2id"] = {f"LABEL_{k}": k for k in range(self.num_labels)}
        return d

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> "EncoderConfig":
        """Read a transformers ModernBERT config.json in either dialect: legacy
        (global_rope_theta / local_rope_theta / global_attn_every_n_layers) or newer
        (rope_parameters per layer type / layer_types)."""
        mt = d.get("model_type", "modernbert")
        if mt != "modernbert":
            raise ConfigError(f"config.json has model_type {mt!r}; mmbert loads ModernBERT models only "
                              f"(use transformers' AutoModel for other architectures)")
        # fields a config.json leaves out take transformers' defaults, not our mmBERT ones
        d = {**HF_DEFAULTS, **d}
        rp = d.get("rope_parameters")
        if isinstance(rp, dict):
            if "full_attention" in rp or "sliding_attention" in rp:
                if "full_attention" in rp:
                    d.setdefault("global_rope_theta", rp["full_attention"].get("rope_theta"))
                if "sliding_attention" in rp:
                    d.setdefault("local_rope_theta", rp["sliding_attention"].get("rope_theta"))
            elif "rope_theta" in rp:
                d.setdefault("global_rope_theta", rp["rope_theta"])
        lt = d.get("layer_types")
        if lt:
            glob = [i for i, t in enumerate(lt) if t == "full_attention"]
            if not glob or glob[0] != 0:
                raise ConfigError("config.json layer_types must start with a 'full_attention' layer")
            n = glob[1] if len(glob) > 1 else len(lt)
            expect = ["full_attention" if i % n == 0 else "sliding_attention" for i in range(len(lt))]
            if list(lt) != expect:
                raise ConfigError(f"config.json layer_types {lt} is not a regular 'global every n "
                                  f"layers' pattern, which is the only one this encoder implements")
            d["global_attn_every_n_layers"] = n
        if "sliding_window" in d and "local_attention" not in d and d["sliding_window"]:
            d["local_attention"] = 2 * int(d["sliding_window"])
        if "id2label" in d and d["id2label"] is not None:
            d["id2label"] = {int(k): v for k, v in d["id2label"].items()}
            d["num_labels"] = len(d["id2label"])
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known and (v is not None or k.endswith("_token_id"))}
        if isinstance(kwargs.get("eos_token_id"), list):
            kwargs["eos_token_id"] = kwargs["eos_token_id"][0]
        for k in ("global_rope_theta", "local_rope_theta", "norm_eps"):
            if k in kwargs:
                kwargs[k] = float(kwargs[k])
        try:
            return cls(**kwargs)
        except TypeError as e:  # pragma: no cover - defensive
            raise ConfigError(f"config.json could not be read: {e}") from e

    def save_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))

    @classmethod
    def load_json(cls, path: str | Path) -> "EncoderConfig":
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"cannot read config {path}: {e}") from e
        if "model_type" in d:
            return cls.from_hf_dict(d)
        if "id2label" in d and d["id2label"] is not None:
            d["id2label"] = {int(k): v for k, v in d["id2label"].items()}
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"{path}: unknown EncoderConfig fields {sorted(unknown)}")
        return cls(**d)


# transformers' ModernBertConfig defaults (what a missing config.json field means)
HF_DEFAULTS: dict[str, Any] = dict(
    vocab_size=50368, hidden_size=768, intermediate_size=1152, num_hidden_layers=22, num_attention_heads=12,
    hidden_activation="gelu", max_position_embeddings=8192, initializer_range=0.02, initializer_cutoff_factor=2.0,
    norm_eps=1e-5, norm_bias=False, pad_token_id=50283, eos_token_id=50282, bos_token_id=50281,
    cls_token_id=50281, sep_token_id=50282, unk_token_id=None, mask_token_id=None, attention_bias=False,
    attention_dropout=0.0, global_attn_every_n_layers=3, local_attention=128, global_rope_theta=160000.0,
    local_rope_theta=10000.0, embedding_dropout=0.0, mlp_bias=False, mlp_dropout=0.0, decoder_bias=True,
    classifier_pooling="cls", classifier_dropout=0.0, classifier_bias=False, classifier_activation="gelu",
    tie_word_embeddings=True)

_MODERNBERT_TOKENS = dict(pad_token_id=50283, eos_token_id=50282, bos_token_id=50281,
                          cls_token_id=50281, sep_token_id=50282, unk_token_id=50280,
                          mask_token_id=50284)

PRESETS: dict[str, EncoderConfig] = {
    # CPU-sized: ~3.6M parameters with a 32k vocab; 6 layers so two are global (0, 3).
    "tiny": EncoderConfig(vocab_size=32768, hidden_size=128, intermediate_size=256,
                          num_hidden_layers=6, num_attention_heads=4, max_position_embeddings=1024,
                          local_attention=64, global_rope_theta=160000.0, local_rope_theta=10000.0),
    "mmbert-small": EncoderConfig(vocab_size=256000, hidden_size=384, intermediate_size=1152,
                                  num_hidden_layers=22, num_attention_heads=6),
    "mmbert-base": EncoderConfig(vocab_size=256000, hidden_size=768, intermediate_size=1152,
                                 num_hidden_layers=22, num_attention_heads=12),
    "modernbert-base": EncoderConfig(vocab_size=50368, hidden_size=768, intermediate_size=1152,
                                     num_hidden_layers=22, num_attention_heads=12,
                                     global_rope_theta=160000.0, local_rope_theta=10000.0,
                                     classifier_pooling="mean", **_MODERNBERT_TOKENS),
    "modernbert-large": EncoderConfig(vocab_size=50368, hidden_size=1024, intermediate_size=2624,
                                      num_hidden_layers=28, num_attention_heads=16,
                                      global_rope_theta=160000.0, local_rope_theta=10000.0,
                                      classifier_pooling="mean", **_MODERNBERT_TOKENS),
}
