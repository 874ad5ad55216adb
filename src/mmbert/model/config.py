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

from mmbert.utils import BOS_ID, EOS_ID, IGNORE_INDEX, MASK_ID, PAD_ID, UNK_ID, atomic_write


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
    pad_token_id: int = PAD_ID
    eos_token_id: int = EOS_ID
    bos_token_id: int = BOS_ID
    cls_token_id: int = BOS_ID
    sep_token_id: int = EOS_ID
    unk_token_id: int | None = UNK_ID
    mask_token_id: int | None = MASK_ID
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

        check_types(self)
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
        for name in ("hidden_activation", "classifier_activation"):
            v = getattr(self, name)
            need(v in ACTIVATIONS, f"EncoderConfig.{name} {v!r} is not an activation this encoder computes; "
                                   f"use one of: {', '.join(ACTIVATIONS)}")
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
        """Exact parameter count of the model `build_model(self, head)` creates (a tied decoder once)."""
        h, i, L, V = self.hidden_size, self.intermediate_size, self.num_hidden_layers, self.vocab_size
        norm = h * (2 if self.norm_bias else 1)
        attn = h * 3 * h + h * h + (4 * h if self.attention_bias else 0)
        mlp = h * 2 * i + i * h + ((2 * i + h) if self.mlp_bias else 0)
        layer = attn + mlp + 2 * norm
        n = L * layer - norm  # layer 0 has an identity attn_norm
        n += norm + norm  # embedding norm, final norm
        if head == "mlm":
            n += h * h + norm + (V if self.decoder_bias else 0) + (0 if self.tie_word_embeddings else V * h)
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
        """config.json for transformers' ModernBERT in both dialects, from the same resolved values:
        the legacy keys every transformers version since 4.48 reads, and the `rope_parameters` /
        `layer_types` that transformers ≥ 5 writes and reads first."""
        d = self.to_dict()
        d["rope_parameters"] = {"full_attention": {"rope_type": "default", "rope_theta": self.global_rope_theta},
                                "sliding_attention": {"rope_type": "default", "rope_theta": self.local_rope_theta}}
        d["layer_types"] = self.layer_types
        id2label = d.pop("id2label")
        d.pop("num_labels")
        d.update(model_type="modernbert", architectures=["ModernBertForMaskedLM"],
                 sparse_prediction=False, sparse_pred_ignore_index=IGNORE_INDEX,
                 classifier_pooling=self.classifier_pooling, repad_logits_with_grad=False,
                 deterministic_flash_attn=False)
        if id2label is not None:
            d["id2label"] = {str(k): v for k, v in id2label.items()}
            d["label2id"] = {v: int(k) for k, v in id2label.items()}
        else:
            d["id2label"] = {str(k): f"LABEL_{k}" for k in range(self.num_labels)}
            d["label2id"] = {f"LABEL_{k}": k for k in range(self.num_labels)}
        return d

    @classmethod
    def from_hf_dict(cls, d: Any) -> "EncoderConfig":
        """Read a transformers ModernBERT config.json in either dialect (see `read_hf_dict`)."""
        return cls(**read_hf_dict(d))

    def save_json(self, path: str | Path) -> None:
        atomic_write(path, json.dumps(self.to_dict(), indent=2, sort_keys=True))

    @classmethod
    def load_json(cls, path: str | Path) -> "EncoderConfig":
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read config {path}: {e}") from e
        try:
            if not isinstance(d, dict):
                raise ConfigError(f"the file must hold a JSON object, got {_json_type(d)}")
            if "model_type" in d:
                return cls.from_hf_dict(d)
            unknown = set(d) - {f.name for f in fields(cls)}
            if unknown:
                raise ConfigError(f"unknown EncoderConfig fields {sorted(unknown)}")
            if d.get("id2label") is not None:
                d["id2label"] = _read_id2label(d["id2label"])
            return cls(**d)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None


# ----------------------------------------------------------------------------- field types
# Activations transformers' ModernBERT accepts (ACT2FN names) that model/encoder.py computes with the
# same formula; the rest (prelu and xielu have learned parameters, laplace and gelu_accurate are
# rare) are refused by name.
ACTIVATIONS = ("gelu", "gelu_python", "gelu_new", "gelu_pytorch_tanh", "gelu_python_tanh", "gelu_fast",
               "gelu_10", "quick_gelu", "relu", "relu2", "relu6", "leaky_relu", "silu", "swish", "sigmoid",
               "tanh", "mish", "linear")
SPECIAL_ID_FIELDS = ("pad_token_id", "eos_token_id", "bos_token_id", "cls_token_id", "sep_token_id",
                     "unk_token_id", "mask_token_id")


def _json_type(v: Any) -> str:
    """The JSON name of a value's type, for error messages."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, (list, tuple)):
        return "list"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


def check_types(cfg: "EncoderConfig") -> None:
    """Every field holds a value of its declared JSON type (booleans are not numbers, numbers are
    not booleans); the message names the field, what it must be and what it got."""
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        t = str(f.type)
        if f.name in SPECIAL_ID_FIELDS:
            ok, want = v is None or (isinstance(v, int) and not isinstance(v, bool)), "an integer or null"
        elif f.name == "id2label":
            ok, want = v is None or (isinstance(v, dict) and all(
                isinstance(k, int) and isinstance(x, str) for k, x in v.items())), "an object of id → label name"
        elif t == "bool":
            ok, want = isinstance(v, bool), "true or false"
        elif t == "int":
            ok, want = isinstance(v, int) and not isinstance(v, bool), "an integer"
        elif t == "float":
            ok, want = isinstance(v, (int, float)) and not isinstance(v, bool), "a number"
        elif t == "str":
            ok, want = isinstance(v, str), "a string"
        else:  # pragma: no cover - a new field type must be added here
            raise TypeError(f"check_types: no rule for field {f.name} of type {t}")
        if not ok:
            raise ConfigError(f"{f.name} must be {want}, got {_json_type(v)} {v!r}"[:300])


def _read_id2label(v: Any) -> dict[int, str]:
    if not isinstance(v, dict):
        raise ConfigError(f"id2label must be an object mapping ids to label names, got {_json_type(v)}")
    out = {}
    for k, name in v.items():
        try:
            i = int(k)
        except (TypeError, ValueError):
            raise ConfigError(f"id2label key {k!r} is not an integer id; write ids as \"0\", \"1\", …") from None
        if not isinstance(name, str):
            raise ConfigError(f"id2label[{k!r}] must be a label name (string), got {_json_type(name)}")
        out[i] = name
    if sorted(out) != list(range(len(out))):
        raise ConfigError(f"id2label ids must be 0..{len(out) - 1}, got {sorted(out)}")
    return out


# ----------------------------------------------------------------------------- config.json reader
def _refuse(field: str, value: Any, fix: str) -> ConfigError:
    return ConfigError(f"config.json {field} = {json.dumps(value)[:200]} is not supported: {fix}")


def _rope_thetas(d: dict[str, Any]) -> tuple[float, float]:
    """(global θ, local θ) as transformers ≥ 5 resolves them: `rope_parameters[type].rope_theta`,
    else the legacy `global_rope_theta` / `local_rope_theta`, else 160000 / 10000. Only the
    default RoPE is implemented; scaled variants are refused rather than silently dropped."""
    if d.get("rope_scaling") is not None:
        raise _refuse("rope_scaling", d["rope_scaling"], "RoPE scaling (linear/dynamic/yarn/…) is not implemented "
                      "in mmbert; remove it to use plain RoPE (changes the model), or run the model with "
                      "transformers")
    rp = d.get("rope_parameters")
    if rp is None:
        rp = {}
    if not isinstance(rp, dict):
        raise ConfigError(f"config.json rope_parameters must be an object, got {_json_type(rp)}")
    per_type = {k: v for k, v in rp.items() if k in ("full_attention", "sliding_attention")}
    if rp and not per_type:
        raise _refuse("rope_parameters", rp, "ModernBERT needs one entry per layer type, "
                      "{\"full_attention\": {\"rope_theta\": …}, \"sliding_attention\": {\"rope_theta\": …}} "
                      "(transformers ignores a flat rope_theta here and uses 160000/10000)")
    # transformers ≥ 5 itself writes flat "rope_type": "default" / "rope_theta" beside the per-type
    # entries when every layer has one type; its layers read only the per-type entries, and so do we
    if rp.get("rope_type", "default") != "default":
        raise _refuse("rope_parameters.rope_type", rp["rope_type"], "only the default RoPE is implemented in "
                      "mmbert (no linear/dynamic/yarn/longrope scaling); run the model with transformers")
    unknown = set(rp) - set(per_type) - {"rope_type", "rope_theta"}
    if unknown:
        raise _refuse("rope_parameters", rp, f"unknown key(s) {sorted(unknown)}; only 'full_attention' and "
                      f"'sliding_attention' are read")
    thetas = []
    for kind, legacy, default in (("full_attention", "global_rope_theta", 160000.0),
                                  ("sliding_attention", "local_rope_theta", 10000.0)):
        entry = per_type.get(kind) or {}
        if not isinstance(entry, dict):
            raise ConfigError(f"config.json rope_parameters.{kind} must be an object, got {_json_type(entry)}")
        rtype = entry.get("rope_type", entry.get("type", "default"))
        if rtype != "default":
            raise _refuse(f"rope_parameters.{kind}.rope_type", rtype, "only the default RoPE is implemented "
                          "in mmbert (no linear/dynamic/yarn/longrope scaling); run the model with transformers")
        extra = set(entry) - {"rope_type", "type", "rope_theta"}
        if extra:
            raise _refuse(f"rope_parameters.{kind}", entry, f"unknown RoPE setting(s) {sorted(extra)}; only "
                          f"rope_theta is implemented")
        theta = entry.get("rope_theta", d.get(legacy, default))
        if isinstance(theta, bool) or not isinstance(theta, (int, float)):
            name = f"rope_parameters.{kind}.rope_theta" if "rope_theta" in entry else legacy
            raise ConfigError(f"config.json {name} must be a number, got {_json_type(theta)}")
        thetas.append(float(theta))
    return thetas[0], thetas[1]


def _every_n(d: dict[str, Any], num_layers: int) -> int:
    """global_attn_every_n_layers from `layer_types` (transformers ≥ 5: it wins) or the legacy key."""
    lt = d.get("layer_types")
    n_legacy = d.get("global_attn_every_n_layers", 3)
    if lt is None:
        return n_legacy
    if not isinstance(lt, list) or not all(t in ("full_attention", "sliding_attention") for t in lt):
        raise _refuse("layer_types", lt, "it must be a list of 'full_attention' / 'sliding_attention'")
    if len(lt) != num_layers:
        raise ConfigError(f"config.json layer_types has {len(lt)} entries but num_hidden_layers is {num_layers}; "
                          f"give one entry per layer")
    glob = [i for i, t in enumerate(lt) if t == "full_attention"]
    n = glob[1] if len(glob) > 1 else num_layers
    if isinstance(n_legacy, int) and not isinstance(n_legacy, bool) and n_legacy > 0:
        if _pattern(n_legacy, num_layers) == lt:
            n = n_legacy  # the same pattern: keep the file's own number (round trips exactly)
    if not glob or _pattern(n, num_layers) != lt:
        raise _refuse("layer_types", lt, "this encoder implements 'full attention on layers i % n == 0, "
                      "sliding window elsewhere' only; run irregular patterns with transformers")
    return n


def _pattern(n: int, num_layers: int) -> list[str]:
    return ["full_attention" if i % n == 0 else "sliding_attention" for i in range(num_layers)]


def read_hf_dict(d: Any) -> dict[str, Any]:
    """EncoderConfig keyword arguments from a transformers ModernBERT config.json, read from the raw
    dict before any default is applied: legacy (global_rope_theta / local_rope_theta /
    global_attn_every_n_layers) or transformers ≥ 5 (rope_parameters per layer type, layer_types,
    and `sliding_window`, which transformers lets override local_attention). A field the file
    leaves out takes transformers' default, except special token ids, which stay None so that the
    tokenizer's are used (`mmbert.tokenizer.resolve_special_ids`). Settings this encoder does not
    compute are refused by name (ConfigError), never dropped."""
    if not isinstance(d, dict):
        raise ConfigError(f"config.json must hold a JSON object, got {_json_type(d)}")
    mt = d.get("model_type", "modernbert")
    if mt != "modernbert":
        raise ConfigError(f"config.json has model_type {mt!r}; mmbert loads ModernBERT models only "
                          f"(use transformers' AutoModel for other architectures)")
    known = {f.name for f in fields(EncoderConfig)}
    kw = {k: HF_DEFAULTS[k] for k in known if k in HF_DEFAULTS}
    kw.update({k: None for k in SPECIAL_ID_FIELDS})
    kw.update({k: v for k, v in d.items() if k in known and k != "id2label"})
    for k in ("global_rope_theta", "local_rope_theta"):  # resolved below from either dialect
        kw.pop(k, None)
    kw["global_rope_theta"], kw["local_rope_theta"] = _rope_thetas(d)
    n_layers = kw["num_hidden_layers"]
    if isinstance(n_layers, int) and not isinstance(n_layers, bool):
        kw["global_attn_every_n_layers"] = _every_n(d, n_layers)
    if d.get("sliding_window") is not None:  # transformers ≥ 5: half-window; it overrides local_attention
        sw = d["sliding_window"]
        if isinstance(sw, bool) or not isinstance(sw, int):
            raise ConfigError(f"config.json sliding_window must be an integer, got {_json_type(sw)}")
        kw["local_attention"] = 2 * sw
    if d.get("head_dim") is not None and isinstance(kw.get("hidden_size"), int) and isinstance(
            kw.get("num_attention_heads"), int) and kw["num_attention_heads"] > 0 and \
            d["head_dim"] != kw["hidden_size"] // kw["num_attention_heads"]:
        raise _refuse("head_dim", d["head_dim"], "ModernBERT's head dim is hidden_size / num_attention_heads "
                      f"= {kw['hidden_size'] // kw['num_attention_heads']}; remove head_dim")
    for k in ("hidden_activation", "classifier_activation"):
        if isinstance(kw.get(k), str) and kw[k] not in ACTIVATIONS:
            raise _refuse(k, kw[k], f"mmbert computes only {', '.join(ACTIVATIONS)}; run this model with "
                          f"transformers")
    if isinstance(kw.get("eos_token_id"), list):  # generation configs may list several; the first frames
        eos = kw["eos_token_id"]
        kw["eos_token_id"] = eos[0] if eos and all(isinstance(x, int) for x in eos) else eos
    if d.get("id2label") is not None:
        kw["id2label"] = _read_id2label(d["id2label"])
        kw["num_labels"] = len(kw["id2label"])
    elif isinstance(d.get("num_labels"), int):
        kw["num_labels"] = d["num_labels"]
    # a number written as an integer (norm_eps: 0 is caught by validate) is still a number
    for k in ("norm_eps", "initializer_range", "initializer_cutoff_factor", "embedding_dropout",
              "attention_dropout", "mlp_dropout", "classifier_dropout"):
        if isinstance(kw.get(k), int) and not isinstance(kw[k], bool):
            kw[k] = float(kw[k])
    return kw


# transformers' ModernBertConfig defaults (what a missing config.json field means). Its special token
# ids (50281-50283) are left out: they are ModernBERT-vocabulary ids, ordinary tokens in any other
# vocabulary, so a missing id stays None and the tokenizer supplies it.
HF_DEFAULTS: dict[str, Any] = dict(
    vocab_size=50368, hidden_size=768, intermediate_size=1152, num_hidden_layers=22, num_attention_heads=12,
    hidden_activation="gelu", max_position_embeddings=8192, initializer_range=0.02, initializer_cutoff_factor=2.0,
    norm_eps=1e-5, norm_bias=False, attention_bias=False,
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
