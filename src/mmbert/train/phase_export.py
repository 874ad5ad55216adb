"""Hugging Face model directories written at each phase end of a training run: export/<phase>/.

    export_phase(model, run_dir / "export" / "mid", dist, tokenizer, card=phase_card(recipe, done, counts, tokens))

Each export is a complete model directory (config.json with the phase's RoPE θ, weights, the
shards' tokenizer, a model card naming the phases so far), published whole by one rename
(utils.publish_dir): a reader or a kill never sees half of one. A kill between a phase-end
checkpoint and its export is repaired on resume by `remake_exports`, from that checkpoint.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from mmbert.export.card import CardInfo
from mmbert.export.hf import write_model_files
from mmbert.model import build_model
from mmbert.model.config import EncoderConfig
from mmbert.train import checkpoint as ckpt
from mmbert.train.parallel import Dist
from mmbert.train.recipe import Phase, Recipe, resolve_languages
from mmbert.utils import publish_dir


def phase_card(recipe: Recipe, done: Sequence[Phase], counts: dict[str, int], tokens: int) -> CardInfo:
    """Model card of a phase-end export: the languages of every phase so far, tokens seen, the recipe."""
    langs = list(dict.fromkeys(lang for p in done for lang in resolve_languages(p.languages, counts, p.shares)))
    return CardInfo(languages=langs, tokens_seen=tokens,
                    recipe=f"{recipe.name} → {' → '.join(p.name for p in done)}",
                    description=f"Masked-LM pretraining with the `{recipe.name}` recipe, exported at the end of "
                                f"phase `{done[-1].name}`.")


def export_phase(model, inner, path: Path, d: Dist, tokenizer: Any = None, card: CardInfo | None = None) -> None:
    """Phase-end Hugging Face directory (+ the shards' tokenizer), published whole (utils.publish_dir).
    `model` is the (possibly wrapped) training model, `inner` its plain module; every rank calls this
    (a sharded model is gathered by all of them), rank 0 writes."""
    if any(type(p).__name__ == "DTensor" for p in inner.parameters()):
        sd = ckpt.model_state(model)  # all ranks gather
        if not d.is_main:
            return
        inner_cpu = build_model(inner.config, head="mlm", init=False)
        inner_cpu.load_state_dict(sd, strict=False)
        inner = inner_cpu
    if not d.is_main:
        return
    if tokenizer is not None:
        inner.tokenizer = tokenizer
    with publish_dir(path) as tmp:
        write_model_files(inner, tmp, card=card)


def remake_exports(ck_root: Path, done: Sequence[Phase], first: int, config: EncoderConfig, out: Path,
                   tokenizer: Any, card: Callable[[int, int], CardInfo] | None = None) -> None:
    """Write export/<phase>/ again from its phase-end checkpoint (phase-end checkpoints are kept)
    for each finished phase of this track whose export is missing: a kill between the phase-end
    checkpoint and its export otherwise loses the export for good. `done` are the track's finished
    phases from index `first` on; `card(i, tokens)` makes the card of phase i."""
    missing = [(first + i, p) for i, p in enumerate(done) if not (out / "export" / p.name / "config.json").is_file()]
    if not missing:
        return
    ends = {}
    for c in ckpt.list_checkpoints(ck_root):
        st = ckpt.read_state(c)
        if st.get("phase_tokens") == 0 and st.get("keep"):
            ends[st.get("phase")] = c
    for i, p in missing:
        c = ends.get(i + 1)
        if c is None:
            _warn(f"export/{p.name} is missing and its phase-end checkpoint is gone; not re-made")
            continue
        with torch.random.fork_rng(devices=[]):  # building a model draws from the RNG training resumes with
            model = build_model(config, head="mlm", init=False)
        ckpt.load_model_weights(c / "model.safetensors", model)
        model.set_rope_theta(p.global_rope_theta, p.local_rope_theta)
        export_phase(model, model, out / "export" / p.name, Dist(), tokenizer,
                     card=card(i, int(ckpt.read_state(c).get("tokens", 0))) if card else None)
        _warn(f"re-made export/{p.name} from {c} (the run was stopped before writing it)")


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)
