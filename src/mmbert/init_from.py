"""Size transfer: initialise a model of one size from the weights of another (grow or shrink).

ModernBERT-large was initialised from ModernBERT-base (grow), and mmBERT-small from mmBERT-base
(shrink). Neither paper publishes code for this; the rules below are ours and are stated here.

    mmbert init-from --model out/mmbert-base --preset mmbert-small --out out/small-init
    python -c "from mmbert.init_from import init_from; init_from('out/base', 'out/large', preset='modernbert-large')"

The target takes its four shape fields (hidden_size, intermediate_size, num_hidden_layers,
num_attention_heads) from the preset or config given; everything else (vocabulary and special
tokens, RoPE θ, attention windows, biases) is kept from the source, since the embeddings and
decoder are copied and must keep meaning the same tokens. The vocabulary is never resized.

Every target tensor is an index selection of the source tensor: a `TransferPlan` says, per axis,
which source index each target index copies — new layer i ← source layer `layers[i]`, new hidden
unit d ← `hidden[d]` (one map for the whole residual stream: embeddings, norms, every projection's
input or output side, MLM head), new head h of layer i ← `heads[i][h]`, dim e inside a head ←
`head_dim[e]`, new intermediate unit u of layer i ← `intermediate[i][u]`. So whole heads move
together (the q, k and v rows of a head and its Wo columns use one head map), and the GeGLU `Wi`
input half and gate half use one unit map (unit u's input and gate rows stay paired with its Wo
column). Inside a head the map is applied to each rotary half, so the pair (e, e + head_dim/2)
that RoPE rotates together stays a pair.

grow (every target size >= the source's):
- depth, Gopher-style (Rae et al. 2021): new layer i copies source layer round(i·L_old/L_new),
  rounding halves up and clamping to L_old − 1 (reached only when L_new > 2·L_old).
- width, "tile from the middle" (ModernBERT, Warner et al. 2024 §2.2.3, for every matrix and
  vector): the source block sits in the centre of the target, offset (n_new − n_old) // 2, and is
  repeated periodically outwards: target index t copies source index (t − offset) mod n_old. For
  heads this tiles whole heads, for Wqkv q, k and v separately. No rescaling (as in ModernBERT's
  recipe): the grown model is a nearby starting point, not the same function.
- a new layer i > 0 copied from source layer 0 (which has no attn_norm, because the embeddings
  end in a norm) gets attn_norm weight 1 (bias 0), LayerNorm's own initialisation.

shrink (every target size <= the source's), rule "magnitude" (default) or "strided":
- depth: new layer i copies source layer round(i·(L_old − 1)/(L_new − 1)) — evenly spread with
  both ends kept, because the first layer reads the embeddings and the last one feeds the MLM
  head that was trained on its output. (Gopher's round(i·L_old/L_new) would drop the last layer.)
- "strided": evenly spaced indices, index j ← floor(j·n_old/n_new), for hidden units, heads and
  intermediate units. Data-free and blind to what the weights learned.
- "magnitude" (default): keep the units whose weights carry the most mass, scored per source
  layer; the chosen indices stay in their original order.
    heads:        ‖W_v,h‖_F · ‖W_o[:, h]‖_F, the size of the head's value → output path
                  (q and k only decide where a head looks, not how much it writes);
    intermediate: ‖W_in[u]‖ · ‖W_gate[u]‖ · ‖W_o[:, u]‖, the path through GeGLU unit u;
    hidden units: how much the residual-stream dimension is written and read — for every
                  writer (embeddings, each Wo) its row's share of the matrix's squared norm, plus
                  for every reader (each Wqkv / Wi / head.dense column scaled by the LayerNorm
                  gain in front of it) its column's share; summed over all writers and readers.
  Rationale: weight magnitude is the cheapest importance estimate that uses what the source
  learned (no data needed); it is meant to keep the few heavy residual dimensions and units that
  trained transformers lean on, which a strided pick keeps or drops by chance.
  benchmarks/shrink_transfer.py measures both rules against a random initialisation.
- head_dim, when it shrinks, is selected strided inside each rotary half.
Mixed transfers (one axis grows, another shrinks) use, per axis, the rule of its direction.
"""

from __future__ import annotations

import datetime
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from mmbert.export.card import merged_card
from mmbert.merge import WEIGHTS_NAME, open_checkpoint, write_model_dir
from mmbert.model.config import EncoderConfig

SHAPE_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
SHRINK_RULES = ("magnitude", "strided")


class TransferError(ValueError):
    """A size transfer that cannot be done; the message names the problem and the fix."""


# ----------------------------------------------------------------------------- index maps
def gopher_layer_map(l_old: int, l_new: int) -> list[int]:
    """New layer i ← source layer round(i·L_old/L_new), halves up, clamped to L_old − 1."""
    return [min(l_old - 1, math.floor(i * l_old / l_new + 0.5)) for i in range(l_new)]


def spread_layer_map(l_old: int, l_new: int) -> list[int]:
    """New layer i ← source layer round(i·(L_old−1)/(L_new−1)): both ends kept."""
    if l_new == 1:
        return [l_old - 1]
    return [math.floor(i * (l_old - 1) / (l_new - 1) + 0.5) for i in range(l_new)]


def tile_from_middle(n_old: int, n_new: int) -> torch.Tensor:
    """Target index t ← source index (t − (n_new − n_old)//2) mod n_old."""
    return (torch.arange(n_new) - (n_new - n_old) // 2) % n_old


def strided(n_old: int, n_new: int) -> torch.Tensor:
    """n_new evenly spaced source indices: j ← floor(j·n_old/n_new)."""
    return torch.tensor([j * n_old // n_new for j in range(n_new)])


def top_k_sorted(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest scores, in increasing index order."""
    return torch.topk(scores, k).indices.sort().values


def _rotary_axis(hd_old: int, hd_new: int) -> torch.Tensor:
    """Within-head map applied to each rotary half, so RoPE pairs (e, e + hd/2) stay paired."""
    n_old, n_new = hd_old // 2, hd_new // 2
    half = tile_from_middle(n_old, n_new) if n_new >= n_old else strided(n_old, n_new)
    return torch.cat([half, half + hd_old // 2])


# ----------------------------------------------------------------------------- plans
@dataclass
class TransferPlan:
    """Which source index each target index copies (see the module docstring)."""

    layers: list[int]
    hidden: torch.Tensor
    heads: list[torch.Tensor]
    head_dim: torch.Tensor
    intermediate: list[torch.Tensor]

    def to_json(self) -> dict:
        return {"layers": self.layers, "hidden": self.hidden.tolist(),
                "heads": [h.tolist() for h in self.heads], "head_dim": self.head_dim.tolist(),
                "intermediate": [u.tolist() for u in self.intermediate]}


def _prefix(state: dict[str, torch.Tensor]) -> str:
    return "model." if any(k.startswith("model.") for k in state) else ""


def _magnitude_scores(state: dict[str, torch.Tensor], src: EncoderConfig):
    """Per-unit importance: (hidden [H], heads per layer [nh], intermediate per layer [I])."""
    p = _prefix(state)
    H, nh, hd, I = src.hidden_size, src.num_attention_heads, src.head_dim, src.intermediate_size
    f = lambda t: t.detach().to(torch.float64)  # noqa: E731

    def share(x: torch.Tensor) -> torch.Tensor:  # each unit's share of the matrix's squared norm
        return x / x.sum().clamp_min(1e-30)

    hidden = share(f(state[f"{p}embeddings.tok_embeddings.weight"]).pow(2).sum(0))
    heads, inter = [], []
    for l in range(src.num_hidden_layers):
        q = f"{p}layers.{l}."
        wqkv, wo = f(state[q + "attn.Wqkv.weight"]), f(state[q + "attn.Wo.weight"])
        wi, wo2 = f(state[q + "mlp.Wi.weight"]), f(state[q + "mlp.Wo.weight"])
        # layer 0 has no attn_norm: the embedding norm is the LayerNorm in front of its Wqkv
        attn_gain = f(state.get(q + "attn_norm.weight", state[f"{p}embeddings.norm.weight"]))
        mlp_gain = f(state[q + "mlp_norm.weight"])
        v = wqkv.view(3, nh, hd, H)[2]
        heads.append(v.pow(2).sum((1, 2)).sqrt() * wo.view(H, nh, hd).pow(2).sum((0, 2)).sqrt())
        w_in, w_gate = wi.view(2, I, H)
        inter.append(w_in.norm(dim=1) * w_gate.norm(dim=1) * wo2.norm(dim=0))
        hidden += share(wo.pow(2).sum(1)) + share(wo2.pow(2).sum(1))  # writers: rows
        hidden += share((wqkv * attn_gain).pow(2).sum(0)) + share((wi * mlp_gain).pow(2).sum(0))
    if "head.dense.weight" in state:
        gain = f(state[f"{p}final_norm.weight"])
        hidden += share((f(state["head.dense.weight"]) * gain).pow(2).sum(0))
    return hidden, heads, inter


def plan_transfer(state: dict[str, torch.Tensor], src: EncoderConfig, dst: EncoderConfig,
                  rule: str = "magnitude") -> TransferPlan:
    """Build the index maps from `src`'s shape to `dst`'s (per axis: tile if it grows, select
    by `rule` if it shrinks)."""
    if rule not in SHRINK_RULES:
        raise TransferError(f"unknown shrink rule {rule!r}; choose one of {', '.join(SHRINK_RULES)}")
    if dst.head_dim % 2 or src.head_dim % 2:
        raise TransferError("head_dim must be even (rotary halves) in source and target")
    L_old, L_new = src.num_hidden_layers, dst.num_hidden_layers
    layers = gopher_layer_map(L_old, L_new) if L_new >= L_old else spread_layer_map(L_old, L_new)
    shrinks = any(getattr(dst, f) < getattr(src, f)
                  for f in ("hidden_size", "intermediate_size", "num_attention_heads"))
    hid_s, head_s, unit_s = (_magnitude_scores(state, src) if rule == "magnitude" and shrinks
                             else (None, None, None))

    def axis(n_old: int, n_new: int, score: torch.Tensor | None) -> torch.Tensor:
        if n_new >= n_old:
            return tile_from_middle(n_old, n_new)
        return strided(n_old, n_new) if score is None else top_k_sorted(score, n_new)

    hidden = axis(src.hidden_size, dst.hidden_size, hid_s)
    heads = [axis(src.num_attention_heads, dst.num_attention_heads, head_s[j] if head_s else None)
             for j in layers]
    inter = [axis(src.intermediate_size, dst.intermediate_size, unit_s[j] if unit_s else None)
             for j in layers]
    return TransferPlan(layers, hidden, heads, _rotary_axis(src.head_dim, dst.head_dim), inter)


# ----------------------------------------------------------------------------- applying a plan
_LAYER = re.compile(r"^(?P<p>(?:model\.)?)layers\.(?P<i>\d+)\.(?P<rest>.+)$")


def apply_plan(state: dict[str, torch.Tensor], src: EncoderConfig, dst: EncoderConfig,
               plan: TransferPlan) -> dict[str, torch.Tensor]:
    """Return the target state dict: every tensor an index selection of a source tensor."""
    p = _prefix(state)
    nh, hd, I = src.num_attention_heads, src.head_dim, src.intermediate_size
    hid, hdim = plan.hidden, plan.head_dim
    out: dict[str, torch.Tensor] = {}
    by_layer: dict[int, dict[str, torch.Tensor]] = {}
    for name, t in state.items():
        m = _LAYER.match(name)
        if m:
            by_layer.setdefault(int(m["i"]), {})[m["rest"]] = t
            continue
        rest = name[len(p):] if name.startswith(p) else name
        if rest in ("embeddings.tok_embeddings.weight",) or name == "decoder.weight" or \
                name == "classifier.weight":
            out[name] = t[:, hid]  # [V or C, H]: rows are tokens / labels, unchanged
        elif rest.startswith(("embeddings.norm.", "final_norm.")) or name.startswith("head.norm.") \
                or name == "head.dense.bias":
            out[name] = t[hid]
        elif name == "head.dense.weight":
            out[name] = t[hid][:, hid]
        elif name in ("decoder.bias", "classifier.bias"):
            out[name] = t.clone()
        else:
            raise TransferError(f"size transfer does not know tensor {name!r}; it handles "
                                f"ModernBERT encoder, MLM head and classifier weights only")

    for i, j in enumerate(plan.layers):
        old, q = by_layer[j], f"{p}layers.{i}."
        heads, units = plan.heads[i], plan.intermediate[i]
        for rest, t in old.items():
            if rest.startswith(("attn_norm.", "mlp_norm.")) or rest in ("attn.Wo.bias", "mlp.Wo.bias"):
                if rest.startswith("attn_norm.") and i == 0:
                    continue  # layer 0 has no attn_norm
                out[q + rest] = t[hid]
            elif rest in ("attn.Wqkv.weight", "attn.Wqkv.bias"):
                x = t.view(3, nh, hd, *t.shape[1:])[:, heads][:, :, hdim]  # [3, nh', hd', (H)]
                if t.dim() == 2:
                    x = x[..., hid]
                out[q + rest] = x.reshape(3 * dst.hidden_size, *([dst.hidden_size] if t.dim() == 2 else []))
            elif rest == "attn.Wo.weight":  # [H, nh·hd]: columns are heads
                out[q + rest] = t[hid].view(-1, nh, hd)[:, heads][:, :, hdim].reshape(dst.hidden_size, -1)
            elif rest in ("mlp.Wi.weight", "mlp.Wi.bias"):  # rows: [input half; gate half]
                x = t.view(2, I, *t.shape[1:])[:, units]
                if t.dim() == 2:
                    x = x[..., hid]
                out[q + rest] = x.reshape(2 * dst.intermediate_size, *x.shape[2:])
            elif rest == "mlp.Wo.weight":  # [H, I]
                out[q + rest] = t[hid][:, units]
            else:
                raise TransferError(f"size transfer does not know tensor {p}layers.{j}.{rest!r}")
        if i > 0 and "attn_norm.weight" not in old:  # copied from source layer 0: fresh norm
            out[q + "attn_norm.weight"] = torch.ones(dst.hidden_size, dtype=old["mlp_norm.weight"].dtype)
            if dst.norm_bias:
                out[q + "attn_norm.bias"] = torch.zeros(dst.hidden_size, dtype=old["mlp_norm.weight"].dtype)
    return {k: v.contiguous().clone() for k, v in out.items()}


def target_config(src: EncoderConfig, preset: str | None = None,
                  config: EncoderConfig | None = None) -> EncoderConfig:
    """The source config with the four shape fields of `preset` (or `config`)."""
    if (preset is None) == (config is None):
        raise TransferError("give exactly one of a target preset or a target config")
    shape = config if config is not None else EncoderConfig.from_preset(preset)
    return src.replace(**{f: getattr(shape, f) for f in SHAPE_FIELDS})


def transfer_state_dict(state: dict[str, torch.Tensor], src: EncoderConfig, dst: EncoderConfig,
                        rule: str = "magnitude") -> tuple[dict[str, torch.Tensor], TransferPlan]:
    """Map a source state dict (transformers ModernBERT names) onto the shape of `dst`."""
    for f in ("vocab_size", "attention_bias", "mlp_bias", "norm_bias", "decoder_bias",
              "tie_word_embeddings"):
        if getattr(src, f) != getattr(dst, f):
            raise TransferError(f"size transfer keeps {f} ({getattr(src, f)}) but the target has "
                                f"{getattr(dst, f)}; build the target with target_config()")
    state = dict(state)
    p = _prefix(state)
    if "decoder.weight" in state and src.tie_word_embeddings:  # tied: one copy, the embeddings
        dec = state.pop("decoder.weight")
        state.setdefault(f"{p}embeddings.tok_embeddings.weight", dec)
    plan = plan_transfer(state, src, dst, rule)
    return apply_plan(state, src, dst, plan), plan


def grow(state, src: EncoderConfig, dst: EncoderConfig) -> dict[str, torch.Tensor]:
    """Grow: Gopher depth map + tile-from-the-middle width (all target sizes >= source)."""
    if any(getattr(dst, f) < getattr(src, f) for f in SHAPE_FIELDS):
        raise TransferError("grow needs every target size >= the source's; use shrink (or "
                            "transfer_state_dict for mixed transfers)")
    return transfer_state_dict(state, src, dst)[0]


def shrink(state, src: EncoderConfig, dst: EncoderConfig, rule: str = "magnitude") -> dict[str, torch.Tensor]:
    """Shrink: spread depth map + per-axis selection by `rule` (all target sizes <= source)."""
    if any(getattr(dst, f) > getattr(src, f) for f in SHAPE_FIELDS):
        raise TransferError("shrink needs every target size <= the source's; use grow (or "
                            "transfer_state_dict for mixed transfers)")
    return transfer_state_dict(state, src, dst, rule)[0]


# ----------------------------------------------------------------------------- directories
def init_from(model: str | Path, out: str | Path, preset: str | None = None,
              config: EncoderConfig | None = None, rule: str = "magnitude",
              overwrite: bool = False) -> Path:
    """Write a model directory of the target size initialised from `model`; returns `out`."""
    from safetensors.torch import load_file

    ck = open_checkpoint(model)
    out = Path(out)
    if out.resolve() == ck.path.resolve():
        raise TransferError(f"--out {out} is the source model; write to a new directory")
    if (out / WEIGHTS_NAME).exists() and not overwrite:
        raise FileExistsError(f"{out / WEIGHTS_NAME} already exists; choose another --out or "
                              f"pass --overwrite")
    state: dict[str, torch.Tensor] = {}
    for f in sorted({f for f, _ in ck.where.values()}):
        state.update(load_file(str(f)))
    src = ck.config
    dst = target_config(src, preset, config)
    new_state, plan = transfer_state_dict(state, src, dst, rule)
    if dst.tie_word_embeddings:
        new_state.pop("decoder.weight", None)
    hf = dst.to_hf_dict()
    if "architectures" in ck.raw_config:
        hf["architectures"] = ck.raw_config["architectures"]
    record = {"source": str(ck.path.resolve()), "preset": preset, "rule": rule,
              "source_shape": {f: getattr(src, f) for f in SHAPE_FIELDS},
              "target_shape": {f: getattr(dst, f) for f in SHAPE_FIELDS},
              "plan": plan.to_json(),
              "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}

    card = merged_card([str(model)], None, f"Initialised from `{model}` by size transfer to the "
                       f"{preset or 'given'} shape (rule {rule}; init_from.json has the plan); not trained since.")
    write_model_dir(out, new_state, hf, tokenizer_from=ck.path, record=record,
                    record_name="init_from.json", card=card)
    return out
