"""`mmbert pretrain`: names from the command line → a Recipe, an EncoderConfig sized to the shards → `train()`.

    mmbert pretrain --recipe cpu-demo --shards out/shards --out out/run [--dry-run]

`--dry-run` prints the recipe's phase table, the model, and the languages each phase resolves to
on these shards, and trains nothing.
"""

from __future__ import annotations

import os
from typing import Any

from mmbert.data.shards import ShardIndex
from mmbert.model.config import EncoderConfig
from mmbert.train.loop import train
from mmbert.train.recipe import Recipe, get_recipe, resolve_languages, validate_recipe


def pretrain(shards: str | os.PathLike, out: str | os.PathLike, *, recipe: str = "cpu-demo", preset: str | None = None,
             dry_run: bool = False, threads: int | None = None, **kwargs: Any) -> dict[str, Any] | str:
    """Resolve a named recipe (or recipe .json) and a model preset (default: the recipe's), size the
    vocabulary from the shards, then `train()` (kwargs go to it). dry_run returns `plan_text`."""
    r = get_recipe(recipe)
    index = ShardIndex.load(shards)
    config = EncoderConfig.from_preset(preset or r.preset, vocab_size=index.vocab_size)
    validate_recipe(r, max_position_embeddings=config.max_position_embeddings)
    if dry_run:
        return plan_text(r, config, preset or r.preset, {lang: index.tokens(lang) for lang in index.languages})
    return train(r, config, shards, out, threads=threads, **kwargs)


def plan_text(recipe: Recipe, config: EncoderConfig, preset: str, counts: dict[str, int]) -> str:
    """The recipe's phase table, the model, and the language set each phase resolves to on shards
    with these training tokens per language."""
    lines = [recipe.describe(), "", f"model: preset {preset}, vocab {config.vocab_size}, "
             f"{config.num_parameters():,} parameters", ""]
    for p in recipe.all_phases():
        langs = resolve_languages(p.languages, counts)
        lines.append(f"{p.name}: {len(langs)} languages: {', '.join(langs[:12])}{' …' if len(langs) > 12 else ''}")
    return "\n".join(lines)
