"""The ModernBERT encoder (Warner et al. 2024, arXiv:2412.13663) as used by mmBERT (Marone et al.
2025, arXiv:2509.06888), written for one device; parallelism is applied from outside (train/parallel.py).

What is notable, in order of the forward pass:
- token embedding → LayerNorm (no bias, eps 1e-5) → dropout; no absolute positions.
- pre-norm layers; layer 0's attention norm is the identity (the embedding norm precedes it).
- fused Wqkv, no linear biases; rotary embeddings on the full head dim with a θ per layer type.
- global attention on layers i % global_attn_every_n_layers == 0, a symmetric sliding window
  |i−j| ≤ local_attention//2 elsewhere (model/attention.py has the backends).
- GeGLU MLP: Wi → 2×intermediate, first half input, second half gate, exact GELU.
- final LayerNorm; MLM head dense → GELU → LayerNorm → decoder tied to the token embeddings (with
  a bias); with labels only the labelled positions are decoded ("sparse prediction"). Other
  activations (transformers' names, `config.ACTIVATIONS`) and an untied decoder follow the config.
- truncated-normal "megatron" init: σ 0.02 cut at ±2σ, output projections σ/√(2L).
- Unpadding: a padded batch is flattened to its real tokens (cu_seqlens) and run packed, so
  nothing is computed on padding; `backend="eager"|"sdpa"` run the padded reference instead.

Parameter names are transformers' ModernBERT names, so export/hf.py's name table is identity.

    python -c "import mmbert, torch; m = mmbert.model.build_model(mmbert.EncoderConfig.from_preset('tiny')); \
print(m(torch.randint(5, 100, (2, 16))).logits.shape)"
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmbert.model.attention import AttentionPlan, attention, resolve_backend
from mmbert.model.loss import linear_cross_entropy
from mmbert.model.config import EncoderConfig
from mmbert.utils import IGNORE_INDEX

HEADS = ("mlm", "none", "sequence-classification", "token-classification")

# transformers' ACT2FN names → the same formula (config.ACTIVATIONS lists the names we accept)
ACTIVATION_FNS = {
    "gelu": F.gelu, "gelu_python": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"), "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_python_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x))),
    "gelu_10": lambda x: torch.clip(F.gelu(x), -10, 10), "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "relu": F.relu, "relu2": lambda x: torch.square(F.relu(x)), "relu6": F.relu6, "leaky_relu": F.leaky_relu,
    "silu": F.silu, "swish": F.silu, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "mish": F.mish,
    "linear": lambda x: x,
}


@dataclass
class EncoderOutput:
    """Model outputs. Padded input → padded outputs ([B, T, …]); packed input → flat ([N, …])."""

    last_hidden_state: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    loss: torch.Tensor | None = None  # mean over labelled items
    loss_sum: torch.Tensor | None = None  # sum over labelled items (for global-batch normalisation)
    num_labelled: int = 0


# ----------------------------------------------------------------------------- building blocks
class RotaryEmbedding(nn.Module):
    """cos/sin tables for rotary embeddings (Su et al. 2021) with one θ per layer type."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.head_dim = config.head_dim
        self.register_buffer("global_inv_freq", self._inv_freq(config.global_rope_theta), persistent=False)
        self.register_buffer("local_inv_freq", self._inv_freq(config.local_rope_theta), persistent=False)

    def _inv_freq(self, theta: float) -> torch.Tensor:
        return 1.0 / (theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float) / self.head_dim))

    def set_theta(self, global_theta: float, local_theta: float) -> None:
        dev = self.global_inv_freq.device
        self.global_inv_freq = self._inv_freq(global_theta).to(dev)
        self.local_inv_freq = self._inv_freq(local_theta).to(dev)

    def forward(self, position_ids: torch.Tensor, local: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Half tables cos(pos·θ_i), sin(pos·θ_i), [..., d/2] (the full tables repeat them twice)."""
        inv = self.local_inv_freq if local else self.global_inv_freq
        freqs = position_ids[..., None].float() * inv  # [..., d/2]
        return freqs.cos(), freqs.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the pairs (i, i + d/2) of x [..., d] by the half tables cos/sin [..., d/2] (broadcast);
    the same maths as `x·cos + rotate_half(x)·sin` with full tables, in float32 like the reference,
    but written as two multiply-adds into the halves of the output: no rotate_half copy, no
    concatenation (RoPE was the largest non-matmul cost of a bf16 forward on CPU). float64 stays
    float64 (the structural parity tests run whole models in double)."""
    xf = x if x.dtype == torch.float64 else x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    if torch.onnx.is_in_onnx_export():  # slice writes become ScatterND in ONNX (~35% of an ORT forward)
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    h = x.shape[-1] // 2  # (slices taken right before each write, so autograd accepts the in-place copies)
    out[..., :h].copy_(torch.addcmul(x1 * cos, x2, sin, value=-1))
    out[..., h:].copy_(torch.addcmul(x2 * cos, x1, sin))
    return out


class Embeddings(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=config.norm_bias)
        self.drop = nn.Dropout(config.embedding_dropout)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.drop(self.norm(self.tok_embeddings(input_ids)))


class Attention(nn.Module):
    def __init__(self, config: EncoderConfig, layer_id: int):
        super().__init__()
        self.num_heads, self.head_dim = config.num_attention_heads, config.head_dim
        self.local = not config.is_global_layer(layer_id)
        self.dropout = config.attention_dropout  # on the attention probabilities
        # on the attention output (after Wo). HF ModernBERT uses attention_dropout for both; FlexBERT,
        # which trained mmBERT, sets them apart (attn_out_dropout_prob 0.1, probabilities 0), so a
        # recipe phase may change this one alone (`set_attention_output_dropout`)
        self.out_dropout = config.attention_dropout
        self.Wqkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.attention_bias)
        self.Wo = nn.Linear(config.hidden_size, config.hidden_size, bias=config.attention_bias)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], plan: AttentionPlan) -> torch.Tensor:
        # x: [B, T, H] (padded) or [N, H] (packed); qkv: [..., 3, heads, head_dim]
        qkv = self.Wqkv(x).view(*x.shape[:-1], 3, self.num_heads, self.head_dim)
        cos, sin = (t[..., None, None, :] for t in rope)  # [..., T, 1, 1, d/2]
        q, k = apply_rotary(qkv[..., :2, :, :], cos, sin).unbind(dim=-3)  # q and k in one pass
        v = qkv[..., 2, :, :]
        out = attention(q, k, v, plan, local=self.local, dropout_p=self.dropout if self.training else 0.0)
        out = self.Wo(out)
        return F.dropout(out, self.out_dropout, training=True) if self.training and self.out_dropout > 0 else out


class MLP(nn.Module):
    """GeGLU: Wi projects to [input | gate], output = Wo(gelu(input) * gate)."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.Wi = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=config.mlp_bias)
        self.drop = nn.Dropout(config.mlp_dropout)
        self.Wo = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)
        self.act = ACTIVATION_FNS[config.hidden_activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Two matmuls on the contiguous halves of Wi rather than chunking one [.., 2I] output: GELU
        # on a strided half is ~2× slower on CPU and dominated the MLP in bf16 (benchmarks/results).
        half = self.Wi.out_features // 2
        w, b = self.Wi.weight, self.Wi.bias
        inp = F.linear(x, w[:half], None if b is None else b[:half])
        gate = F.linear(x, w[half:], None if b is None else b[half:])
        return self.Wo(self.drop(self.act(inp) * gate))


class EncoderLayer(nn.Module):
    def __init__(self, config: EncoderConfig, layer_id: int):
        super().__init__()
        # layer 0: the embedding norm already normalised the input
        self.attn_norm = (nn.Identity() if layer_id == 0
                          else nn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=config.norm_bias))
        self.attn = Attention(config, layer_id)
        self.mlp_norm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=config.norm_bias)
        self.mlp = MLP(config)

    def forward(self, x, rope, plan):
        x = x + self.attn(self.attn_norm(x), rope, plan)
        return x + self.mlp(self.mlp_norm(x))


# ----------------------------------------------------------------------------- the encoder
class PreTrainedMixin:
    """Tokenizer / model-card attachment and parameter counting shared by every model class. Saving is
    `mmbert.save_pretrained(model, path)` (export/hf.py): the model knows nothing of file formats."""

    config: EncoderConfig
    head_type: str
    tokenizer = None
    card = None  # the model card (export/card.py CardInfo) of the directory it was loaded from

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        seen, n = set(), 0
        for name, p in self.named_parameters():
            if id(p) in seen or (exclude_embeddings and "tok_embeddings" in name):
                continue
            seen.add(id(p))
            n += p.numel()
        return n


class Encoder(PreTrainedMixin, nn.Module):
    """The bare encoder (transformers' ModernBertModel)."""

    head_type = "none"

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(EncoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.final_norm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=config.norm_bias)
        self.rotary_emb = RotaryEmbedding(config)
        self.attn_backend = "auto"

    def set_rope_theta(self, global_theta: float, local_theta: float) -> None:
        """Change RoPE θ (context extension between phases): new cos/sin tables, and `self.config`
        becomes a copy that says so. The config object the model was built from is never changed, so
        a caller may build several models from one config."""
        self.config = self.config.replace(global_rope_theta=float(global_theta), local_rope_theta=float(local_theta))
        self.rotary_emb.set_theta(global_theta, local_theta)

    def set_attention_output_dropout(self, p: float) -> None:
        """Dropout on every attention layer's output (a training setting; not part of the config)."""
        for layer in self.layers:
            layer.attn.out_dropout = float(p)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                cu_seqlens: torch.Tensor | None = None, max_seqlen: int | None = None,
                position_ids: torch.Tensor | None = None, backend: str | None = None) -> EncoderOutput:
        hidden, _ = self.forward_with_layout(input_ids, attention_mask, cu_seqlens=cu_seqlens,
                                             max_seqlen=max_seqlen, position_ids=position_ids, backend=backend)
        return EncoderOutput(last_hidden_state=hidden)

    def forward_with_layout(self, input_ids, attention_mask=None, *, cu_seqlens=None, max_seqlen=None,
                            position_ids=None, backend=None) -> tuple[torch.Tensor, "Layout"]:
        """Hidden states in the input's layout, plus the layout (for heads that pool or unpad)."""
        dtype = torch.get_autocast_dtype(input_ids.device.type) if torch.is_autocast_enabled(
            input_ids.device.type) else self.embeddings.tok_embeddings.weight.dtype
        backend = resolve_backend(backend or self.attn_backend, input_ids.device, dtype,
                                  self.config.attention_dropout if self.training else 0.0)
        layout = Layout.build(input_ids, attention_mask, cu_seqlens, max_seqlen, position_ids, backend,
                              self.config.local_attention // 2)
        x = self.embeddings(layout.tokens(input_ids))
        pos = layout.position_ids
        ropes = {local: self.rotary_emb(pos, local) for local in (False, True)}
        for layer in self.layers:
            x = layer(x, ropes[layer.attn.local], layout.plan)
        x = self.final_norm(x)
        return layout.restore(x), layout


class Layout:
    """How the caller's batch maps onto what the layers run on (padded, or packed tokens)."""

    def __init__(self, plan: AttentionPlan, position_ids: torch.Tensor, indices: torch.Tensor | None,
                 shape: tuple[int, int] | None):
        self.plan, self.position_ids = plan, position_ids
        self.indices, self.shape = indices, shape  # set when a padded batch was unpadded

    @classmethod
    def build(cls, input_ids, attention_mask, cu_seqlens, max_seqlen, position_ids, backend, window) -> "Layout":
        dev = input_ids.device
        if cu_seqlens is not None:  # already packed: input_ids [N]
            if input_ids.dim() != 1:
                raise ValueError(f"packed input (cu_seqlens given) needs 1-D input_ids, got shape "
                                 f"{tuple(input_ids.shape)}")
            cu = cu_seqlens.to(dev)
            if int(cu[-1]) != input_ids.shape[0]:
                raise ValueError(f"cu_seqlens ends at {int(cu[-1])} but there are {input_ids.shape[0]} tokens")
            lengths = cu[1:] - cu[:-1]
            if max_seqlen is None:
                max_seqlen = int(lengths.max()) if len(lengths) else 0
            if position_ids is None:
                position_ids = torch.arange(input_ids.shape[0], device=dev) - torch.repeat_interleave(cu[:-1], lengths)
            if backend in ("eager", "sdpa"):
                raise ValueError(f"backend {backend!r} runs padded batches; packed input needs 'varlen', "
                                 f"'torch-varlen' or 'flash'")
            return cls(AttentionPlan.for_packed(cu, max_seqlen, backend, window, dev), position_ids, None, None)
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, seq_len], got shape {tuple(input_ids.shape)}")
        B, T = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(T, device=dev).expand(B, T)
        if backend in ("eager", "sdpa"):
            return cls(AttentionPlan.for_padded(attention_mask.bool() if attention_mask is not None else None,
                                                backend, window), position_ids, None, None)
        # unpad: keep only real tokens (right padding assumed, like transformers)
        mask = attention_mask.bool() if attention_mask is not None else torch.ones(B, T, dtype=torch.bool, device=dev)
        lengths = mask.sum(1)
        indices = mask.flatten().nonzero().squeeze(1)
        cu = F.pad(torch.cumsum(lengths, 0, dtype=torch.int32), (1, 0))
        plan = AttentionPlan.for_packed(cu, int(lengths.max()) if B else 0, backend, window, dev)
        return cls(plan, position_ids.flatten()[indices], indices, (B, T))

    def tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        return input_ids.flatten()[self.indices] if self.indices is not None else input_ids

    def restore(self, x: torch.Tensor) -> torch.Tensor:
        """Packed [N, H] → the caller's padded [B, T, H] (zeros at padding) when we unpadded."""
        if self.indices is None:
            return x
        B, T = self.shape
        out = x.new_zeros(B * T, x.shape[-1])
        out[self.indices] = x
        return out.view(B, T, -1)


# ----------------------------------------------------------------------------- heads
class PredictionHead(nn.Module):
    """dense → classifier_activation (GELU by default) → LayerNorm (shared by MLM and classification
    heads, as in transformers)."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, bias=config.classifier_bias)
        self.act = ACTIVATION_FNS[config.classifier_activation]
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=config.norm_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(self.dense(x)))


class MaskedLM(PreTrainedMixin, nn.Module):
    """Encoder + MLM head; the decoder is tied to the token embeddings unless the config says
    tie_word_embeddings=false (then it is a weight of its own, loaded, trained and exported as such)
    (ModernBertForMaskedLM)."""

    head_type = "mlm"

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        self.model = Encoder(config)
        self.head = PredictionHead(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=config.decoder_bias)
        if config.tie_word_embeddings:
            self.decoder.weight = self.model.embeddings.tok_embeddings.weight

    def set_rope_theta(self, global_theta: float, local_theta: float) -> None:
        self.model.set_rope_theta(global_theta, local_theta)
        self.config = self.model.config  # the encoder's new copy (Encoder.set_rope_theta)

    def set_attention_output_dropout(self, p: float) -> None:
        self.model.set_attention_output_dropout(p)

    def forward(self, input_ids, attention_mask=None, labels=None, *, cu_seqlens=None, max_seqlen=None,
                position_ids=None, backend=None) -> EncoderOutput:
        hidden, _ = self.model.forward_with_layout(input_ids, attention_mask, cu_seqlens=cu_seqlens,
                                                   max_seqlen=max_seqlen, position_ids=position_ids, backend=backend)
        if labels is None:
            return EncoderOutput(last_hidden_state=hidden, logits=self.decoder(self.head(hidden)))
        # sparse prediction: decode only the labelled positions
        keep = labels != IGNORE_INDEX
        h = self.head(hidden[keep])
        targets = labels[keep]
        n = int(targets.numel())
        if torch.is_grad_enabled():
            # training: chunked fused decoder + CE (model/loss.py), no [masked, vocab] logits kept;
            # logits are not returned
            loss_sum = linear_cross_entropy(h, self.decoder.weight, self.decoder.bias, targets)
            return EncoderOutput(loss=loss_sum / max(n, 1), loss_sum=loss_sum, num_labelled=n)
        logits = self.decoder(h)
        loss_sum = F.cross_entropy(logits.float(), targets, reduction="sum")
        return EncoderOutput(logits=logits, loss=loss_sum / max(n, 1), loss_sum=loss_sum, num_labelled=n)


def _pool(hidden: torch.Tensor, layout: Layout, attention_mask, how: str) -> torch.Tensor:
    """Per-sequence vector: "cls" = first token, "mean" = mean over real tokens."""
    if layout.plan.packed and layout.indices is None:  # caller gave packed input: pool per document
        cu = layout.plan.cu_seqlens.long()
        if how == "cls":
            return hidden[cu[:-1]]
        lengths = cu[1:] - cu[:-1]
        seg = torch.repeat_interleave(torch.arange(len(lengths), device=hidden.device), lengths)
        sums = hidden.new_zeros(len(lengths), hidden.shape[-1]).index_add_(0, seg, hidden)
        return sums / lengths[:, None].to(hidden.dtype)
    if how == "cls":
        return hidden[:, 0]
    if attention_mask is None:
        return hidden.mean(1)
    return mean_pool(hidden, attention_mask)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T, H] → [B, H]: the mean over positions where attention_mask is 1 (0 for a row with none)."""
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)  # [B, T, 1]
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


class _Classifier(PreTrainedMixin, nn.Module):
    """Encoder → head → dropout → classifier; subclasses say what is classified (pooled or per token)."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        self.model = Encoder(config)
        self.head = PredictionHead(config)
        self.drop = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def features(self, hidden: torch.Tensor, layout: Layout, attention_mask) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, input_ids, attention_mask=None, labels=None, *, cu_seqlens=None, max_seqlen=None,
                position_ids=None, backend=None) -> EncoderOutput:
        hidden, layout = self.model.forward_with_layout(input_ids, attention_mask, cu_seqlens=cu_seqlens,
                                                        max_seqlen=max_seqlen, position_ids=position_ids,
                                                        backend=backend)
        logits = self.classifier(self.drop(self.head(self.features(hidden, layout, attention_mask))))
        out = EncoderOutput(last_hidden_state=hidden, logits=logits)
        if labels is not None:
            keep = labels != IGNORE_INDEX
            out.loss_sum = F.cross_entropy(logits[keep].float(), labels[keep], reduction="sum")
            out.num_labelled = int(keep.sum())
            out.loss = out.loss_sum / max(out.num_labelled, 1)
        return out


class SequenceClassifier(_Classifier):
    """Pool (mean or first token) → head → dropout → classifier (ModernBertForSequenceClassification)."""

    head_type = "sequence-classification"

    def features(self, hidden, layout, attention_mask):
        return _pool(hidden, layout, attention_mask, self.config.classifier_pooling)


class TokenClassifier(_Classifier):
    """head → dropout → classifier on every token (ModernBertForTokenClassification)."""

    head_type = "token-classification"

    def features(self, hidden, layout, attention_mask):
        return hidden


# ----------------------------------------------------------------------------- init and factory
@torch.no_grad()
def init_weights(model: nn.Module, config: EncoderConfig) -> None:
    """Truncated-normal "megatron" init: σ = initializer_range cut at ±cutoff·σ; output projections
    (attn.Wo, mlp.Wo, head.dense) and an untied decoder σ/√(2L); classifiers hidden^-0.5; norms 1,
    biases 0."""
    std, cut = config.initializer_range, config.initializer_cutoff_factor
    out_std = std / math.sqrt(2.0 * config.num_hidden_layers)

    def tn(w: torch.Tensor, s: float) -> None:
        nn.init.trunc_normal_(w, mean=0.0, std=s, a=-cut * s, b=cut * s)

    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding):
            tn(module.weight, std)
        elif isinstance(module, nn.Linear):
            if name.endswith("classifier"):
                s = config.hidden_size ** -0.5
            elif name.endswith(("attn.Wo", "mlp.Wo", "head.dense")):
                s = out_std
            elif name == "decoder":
                if config.tie_word_embeddings:
                    continue  # the embeddings, initialised above
                s = out_std  # an untied decoder: transformers' ModernBERT init uses the output σ
            else:
                s = std
            tn(module.weight, s)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    if isinstance(model, MaskedLM) and model.decoder.bias is not None:
        nn.init.zeros_(model.decoder.bias)


_CLASSES = {"mlm": MaskedLM, "none": Encoder, "sequence-classification": SequenceClassifier,
            "token-classification": TokenClassifier}


def build_model(config: EncoderConfig, head: str = "mlm", init: bool = True) -> nn.Module:
    """A freshly initialised model with the given head ("mlm", "none", "sequence-classification",
    "token-classification")."""
    if head not in _CLASSES:
        raise ValueError(f"unknown head {head!r}; choose one of: {', '.join(HEADS)}")
    model = _CLASSES[head](config)
    if init:
        init_weights(model, config)
    return model
