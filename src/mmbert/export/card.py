"""Model directories that explain and load themselves: README.md model card + sentence-transformers files.

Every export (phase ends, `mmbert export`, `merge`, `init-from`) calls `write_card_files`, which writes

- `README.md`: YAML front matter the Hugging Face Hub reads (`library_name`, `pipeline_tag:
  fill-mask`, `language`, `license`, `base_model` (+ `base_model_relation`) for merges and
  fine-tunes of hub models, `tags`), then what the model is, how it was made, eval numbers when
  given, and how to load it with transformers / sentence-transformers / mmbert;
- `modules.json`, `sentence_bert_config.json`, `1_Pooling/config.json` (mean pooling unless told
  otherwise), so `SentenceTransformer(dir)` and text-embeddings-inference load the directory as an
  embedding model instead of guessing ("No sentence-transformers model found … creating a new one").

The metadata is written with huggingface_hub's `ModelCardData` (the Hub's own schema) and read back
with `read_card`. A model loaded by `mmbert.from_pretrained` keeps its directory's card as
`model.card`, so re-exporting keeps languages, license and lineage.

    python -c "from mmbert.export.card import read_card; print(read_card('out/merged'))"
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from mmbert.utils import atomic_write, published_name

log = logging.getLogger(__name__)

POOLING_MODES = ("mean", "cls")  # sentence-transformers names; our "first" is its "cls"


@dataclass
class CardInfo:
    """What a model card says beyond config.json. Every field is optional."""

    languages: list[str] = field(default_factory=list)  # language tags as trained on (eng_Latn, fr, …)
    license: str = "apache-2.0"
    base_models: list[str] = field(default_factory=list)  # sources: hub ids or local paths
    relation: str | None = None  # merge | finetune (base_model_relation on the Hub)
    description: str | None = None  # one paragraph: how it was made
    tokens_seen: int | None = None
    recipe: str | None = None
    evals: dict[str, float] = field(default_factory=dict)  # metric name → value
    tags: list[str] = field(default_factory=list)
    pooling: str = "mean"

    def replace(self, **changes) -> "CardInfo":
        return replace(self, **changes)


# ----------------------------------------------------------------------------- reading
def read_card(path: str | Path) -> CardInfo | None:
    """The CardInfo of a directory's README.md front matter (None when there is no card)."""
    readme = Path(path) / "README.md"
    if not readme.is_file():
        return None
    from huggingface_hub import ModelCard

    try:
        data = ModelCard.load(readme).data.to_dict()
    except Exception as e:  # a hand-edited card with broken YAML: keep going without it
        log.warning("%s: the model card's metadata could not be read (%s); it is not carried over", readme, e)
        return None
    langs = data.get("language") or []
    base = data.get("base_model") or []
    pooling = "mean"
    pool_cfg = Path(path) / "1_Pooling" / "config.json"
    if pool_cfg.is_file():
        try:
            pooling = "first" if json.loads(pool_cfg.read_text()).get("pooling_mode_cls_token") else "mean"
        except (json.JSONDecodeError, OSError):
            pass
    return CardInfo(languages=[langs] if isinstance(langs, str) else list(langs),
                    license=data.get("license") or "apache-2.0",
                    base_models=[base] if isinstance(base, str) else list(base),
                    relation=data.get("base_model_relation"),
                    tags=[t for t in data.get("tags") or [] if t not in _DEFAULT_TAGS], pooling=pooling)


# ----------------------------------------------------------------------------- writing
_DEFAULT_TAGS = ("mmbert", "modernbert", "fill-mask", "sentence-transformers", "feature-extraction", "merge")


def hub_language(tag: str) -> str | None:
    """`eng_Latn` / `en` / `zho_Hans` → the Hub's language code (ISO 639-1 where one exists, else
    639-3); None for tags that are not languages."""
    import langcodes

    code = tag.split("_")[0].split("-")[0]
    try:
        lang = langcodes.Language.get(code)
    except (langcodes.LanguageTagError, ValueError):
        return None
    if not lang.language or lang.language in ("und", "zxx", "mul"):
        return None
    return lang.language


def is_hub_id(source: str) -> bool:
    """'org/name' that is not a local path (the form the Hub accepts in base_model)."""
    s = str(source)
    return s.count("/") == 1 and not s.startswith((".", "/", "~")) and not Path(s).exists()


def card_metadata(info: CardInfo) -> dict[str, Any]:
    langs = sorted({c for c in (hub_language(t) for t in info.languages) if c})
    tags = list(dict.fromkeys(["mmbert", "modernbert", "fill-mask", "sentence-transformers", "feature-extraction"]
                              + (["merge"] if info.relation == "merge" else []) + list(info.tags)))
    meta: dict[str, Any] = {"library_name": "transformers", "pipeline_tag": "fill-mask", "license": info.license,
                            "tags": tags}
    if langs:
        meta["language"] = langs
    hub = [b for b in info.base_models if is_hub_id(b)]
    if hub:
        meta["base_model"] = hub
        if info.relation in ("merge", "finetune", "adapter", "quantized"):
            meta["base_model_relation"] = info.relation
    return meta


def render_card(info: CardInfo, config: dict[str, Any], name: str) -> str:
    from huggingface_hub import ModelCardData

    meta = card_metadata(info)
    front = ModelCardData(**meta).to_yaml()
    n_layers, hidden = config.get("num_hidden_layers"), config.get("hidden_size")
    arch = (config.get("architectures") or ["ModernBertForMaskedLM"])[0]
    lines = [f"---\n{front}\n---", "", f"# {name}", "",
             f"A ModernBERT-architecture multilingual encoder ({n_layers} layers, hidden size {hidden}, "
             f"{config.get('vocab_size')}-token vocabulary, up to {config.get('max_position_embeddings')} tokens) "
             f"made with the mmbert toolkit (the [mmBERT](https://arxiv.org/abs/2509.06888) recipe). "
             f"Stored as `{arch}`.", ""]
    made = []
    if info.description:
        made.append(info.description)
    if info.recipe:
        made.append(f"Recipe: `{info.recipe}`.")
    if info.tokens_seen:
        made.append(f"Tokens seen in training: {info.tokens_seen:,}.")
    if info.base_models:
        verb = {"merge": "Merged from", "finetune": "Fine-tuned from"}.get(info.relation or "", "Derived from")
        made.append(f"{verb}: " + ", ".join(f"`{b}`" for b in info.base_models) + ".")
    if made:
        lines += ["## How it was made", "", " ".join(made), ""]
    if info.languages:
        shown = ", ".join(info.languages[:40]) + (f" … ({len(info.languages)} in all)" if len(info.languages) > 40 else "")
        lines += ["## Languages", "", f"Trained on: {shown}.", ""]
    if info.evals:
        lines += ["## Evaluation", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" for k, v in info.evals.items()] + [""]
    pool = "mean pooling" if info.pooling == "mean" else "the first token"
    lines += ["## Use", "", "```python", "from transformers import pipeline",
              'fill = pipeline("fill-mask", model="MODEL_DIR")',
              "", f"from sentence_transformers import SentenceTransformer  # {pool}, as in modules.json",
              'vectors = SentenceTransformer("MODEL_DIR").encode(["a sentence", "eine Satz"])', "",
              "import mmbert", "from mmbert.inference import embed",
              'model = mmbert.from_pretrained("MODEL_DIR")',
              f'vectors = embed(model, ["a sentence"], pooling="{info.pooling}")', "```", "",
              "Served over HTTP (OpenAI- and TEI-compatible): `mmbert serve --model MODEL_DIR`.", "",
              "This card was written by mmbert; training data licences are those of the corpus used.", ""]
    return "\n".join(lines)


def sentence_transformers_files(config: dict[str, Any], pooling: str = "mean") -> dict[str, str]:
    """modules.json, sentence_bert_config.json and 1_Pooling/config.json for a ModernBERT directory."""
    if pooling not in ("mean", "first"):
        raise ValueError(f"unknown pooling {pooling!r} for the sentence-transformers files; choose mean or first")
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    st_config = {"max_seq_length": int(config.get("max_position_embeddings", 512)), "do_lower_case": False}
    pool = {"word_embedding_dimension": int(config["hidden_size"]),
            "pooling_mode_cls_token": pooling == "first", "pooling_mode_mean_tokens": pooling == "mean",
            "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False, "pooling_mode_lasttoken": False,
            "include_prompt": True}
    dump = lambda d: json.dumps(d, indent=2) + "\n"  # noqa: E731
    return {"modules.json": dump(modules), "sentence_bert_config.json": dump(st_config),
            "1_Pooling/config.json": dump(pool)}


def write_card_files(path: str | Path, config: dict[str, Any], info: CardInfo | None = None) -> None:
    """Write README.md and the sentence-transformers files into a model directory (each atomically)."""
    path = Path(path)
    info = info or CardInfo()
    files = sentence_transformers_files(config, info.pooling)
    files["README.md"] = render_card(info, config, published_name(path.resolve()))
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path / name, text)


def merged_card(sources: Sequence[str | Path], relation: str | None, description: str) -> CardInfo:
    """Card of a model made from `sources` (merge, init-from): their languages (union, in order)
    and licence (the first card's), the sources as base models."""
    cards = [c for c in (read_card(s) for s in sources if Path(s).is_dir()) if c is not None]
    langs = list(dict.fromkeys(lang for c in cards for lang in c.languages))
    return CardInfo(languages=langs, license=cards[0].license if cards else "apache-2.0",
                    base_models=[_source_name(s) for s in sources], relation=relation, description=description,
                    pooling=cards[0].pooling if cards else "mean")


def _source_name(source: str | Path) -> str:
    """A source as the card names it: its hub id when it came from one (the cached snapshot's
    models--org--name folder), else the path as given."""
    s = str(source)
    parts = Path(s).parts
    for p in parts:
        if p.startswith("models--") and p.count("--") >= 2:
            return "/".join(p.split("--")[1:3])
    return s


# ----------------------------------------------------------------------------- publishing
def push_to_hub(path: str | Path, repo_id: str, *, private: bool = False, token: str | None = None,
                commit_message: str | None = None) -> str:
    """Upload a model directory to the Hugging Face Hub (created if missing); returns the commit URL.
    Needs network and a token (`hf auth login` or $HF_TOKEN); $HF_ENDPOINT points it elsewhere."""
    from huggingface_hub import HfApi

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no config.json; push a model directory written by mmbert")
    if repo_id.count("/") != 1 or repo_id.startswith("/"):
        raise ValueError(f"--push-to-hub {repo_id!r} is not a repo id; use ORG_OR_USER/NAME")
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(folder_path=str(path), repo_id=repo_id, repo_type="model",
                                 commit_message=commit_message or f"Upload {path.name} with mmbert",
                                 ignore_patterns=[".*", "*.tmp*"])
    except Exception as e:  # network, auth, permissions: one clear line, the local directory is intact
        raise PermissionError(f"pushing {path} to {repo_id} failed ({type(e).__name__}: {e}); the local "
                              f"directory is complete — check the network and token (hf auth login) and retry") from e
    url = getattr(info, "commit_url", None) or str(info)
    log.info("pushed %s to %s (%s)", path, repo_id, url)
    return url
