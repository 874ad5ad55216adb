"""One interface over every encoder the harness evaluates: ours or any transformers encoder directory.

    from mmbert.data.packing import pad_rows
    from mmbert.eval.backbone import hidden_states, load_backbone
    bb = load_backbone("out/ckpt")                 # ModernBERT-dialect dir (ours or HF) or BERT/XLM-R dir
    ids = bb.tokenize(["Hello world"], max_len=128)
    input_ids, mask = pad_rows(ids, bb.pad_id)
    h = hidden_states(bb.model, input_ids, mask)   # [B, T, H] last hidden states

ModernBERT-dialect directories (our checkpoints, our HF exports, transformers ModernBERT) load through
`mmbert.from_pretrained(path, head="none")`; anything else through transformers' AutoModel (BertModel,
XLMRobertaModel, ...). The tokenizer comes from the same directory. Special-token framing is taken
from the tokenizer when it adds specials itself (BERT: [CLS] a [SEP] b [SEP], XLM-R: <s> a </s></s>
b </s>); a bare tokenizer.json (ours) is framed as <cls> a <sep> b <sep> with the config's ids.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from mmbert.export.hf import from_pretrained
from mmbert.tokenizer import ROLE_NAMES, resolve_special_ids
from mmbert.utils import BOS_ID, EOS_ID, PAD_ID


class BackboneError(ValueError):
    """The model directory cannot be evaluated as given; the message says what is missing."""


@contextlib.contextmanager
def _quiet_transformers():
    """Loading an encoder from an *ForMaskedLM checkpoint logs unused-weight notices: expected here."""
    from transformers.utils import logging as hf_logging

    old = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(old)


def _read_config(path: Path) -> dict:
    cfg_path = path / "config.json"
    if not path.is_dir():
        raise FileNotFoundError(f"model directory {path} not found; pass --model a checkpoint or "
                                f"transformers model directory")
    if not cfg_path.is_file():
        raise BackboneError(f"{path} has no config.json; pass a model directory written by "
                            f"save_pretrained (ours or transformers)")
    return json.loads(cfg_path.read_text())


def load_hf_tokenizer(path: str | os.PathLike, config: dict | None = None):
    """The directory's tokenizer as a transformers tokenizer (what the harness calls for any encoder;
    `mmbert.tokenizer.load_tokenizer` gives our own Tokenizer): AutoTokenizer, or a bare
    tokenizer.json wrapped as a fast tokenizer.
    Special tokens it does not name are taken from the config's ids, else from the file's own special
    tokens by their usual names — never from a guessed id (mmBERT's 0–4 are words in other vocabularies)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = Path(path)
    config = config if config is not None else _read_config(path)
    try:
        with _quiet_transformers():
            return _name_specials(AutoTokenizer.from_pretrained(str(path)), config)
    except Exception as e:  # noqa: BLE001 - fall back to a bare tokenizer.json below
        err = e
    tj = path / "tokenizer.json"
    if tj.is_file():
        from tokenizers import Tokenizer

        return _name_specials(PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_file(str(tj))), config)
    raise BackboneError(f"{path} has no usable tokenizer ({type(err).__name__}: {err}); save the "
                        f"tokenizer into the model directory (tokenizer.json)")


def _name_specials(tok, config: dict):
    """Fill the special-token roles a transformers tokenizer leaves unset (resolution order in
    mmbert.tokenizer.resolve_special_ids: config ids, the tokenizer's own roles, its usual names)."""
    vocab = tok.get_vocab()
    named = {f"{role}_id": next(vocab[c] for c in cands if c in vocab)
             for role, cands in ROLE_NAMES.items() if any(c in vocab for c in cands)}
    ids = resolve_special_ids(config, tok, named)
    missing = {f"{role}_token": tok.convert_ids_to_tokens(tid) for role, tid in
               (("pad", ids.pad), ("unk", ids.unk), ("mask", ids.mask), ("cls", ids.cls), ("sep", ids.sep))
               if tid is not None and getattr(tok, f"{role}_token") is None}
    if missing:
        tok.add_special_tokens(missing)  # existing tokens: no new ids
    return tok


def hidden_states(encoder: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] ids + mask → [B, T, H] last hidden states of any encoder the harness loads (ours returns
    an EncoderOutput, transformers a ModelOutput or a tuple)."""
    out = encoder(input_ids=input_ids, attention_mask=attention_mask)
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    return out[0] if isinstance(out, (tuple, list)) else out


@dataclass
class Backbone:
    """A bare encoder + its tokenizer, with the framing and padding the harness needs."""

    model: nn.Module
    tokenizer: Any
    hidden_size: int
    pad_id: int
    prefix: list[int]  # special ids before a single text
    suffix: list[int]  # special ids after a single text (and between / after a pair's texts)
    native: bool  # True: the tokenizer frames pairs itself
    name: str
    _fingerprint: str = field(default="", repr=False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ text → ids
    def tokenize(self, texts: Sequence[str], pairs: Sequence[str] | None = None, *,
                 max_len: int = 128) -> list[list[int]]:
        """Texts (or text pairs) → framed id lists of at most max_len (pairs truncated longest-first)."""
        texts = list(texts)
        if pairs is not None and len(pairs) != len(texts):
            raise ValueError(f"tokenize: {len(texts)} texts but {len(pairs)} pairs")
        if self.native:
            enc = self.tokenizer(texts, list(pairs) if pairs is not None else None, truncation=True,
                                 max_length=max_len)
            return [list(x) for x in enc["input_ids"]]
        a = self._raw(texts)
        if pairs is None:
            budget = max_len - len(self.prefix) - len(self.suffix)
            return [self.prefix + x[:budget] + self.suffix for x in a]
        b = self._raw(list(pairs))
        budget = max_len - len(self.prefix) - 2 * len(self.suffix)
        out = []
        for x, y in zip(a, b):
            x, y = list(x), list(y)
            while len(x) + len(y) > budget:  # longest-first, like transformers
                (x if len(x) >= len(y) else y).pop()
            out.append(self.prefix + x + self.suffix + y + self.suffix)
        return out

    def _raw(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        return [list(x) for x in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def tokenize_words(self, sentences: Sequence[Sequence[str]], *, max_len: int = 128
                       ) -> tuple[list[list[int]], list[list[int]]]:
        """Pre-split words → (framed ids, first-subword position of each word, -1 if truncated away).

        The words are joined with single spaces and tokenized as running text — exactly the ids
        `tokenize(" ".join(words))` gives — so SentencePiece-style tokenizers see the word-start
        marker as in pretraining; each word is then located through the character offsets (its first
        token is the first one overlapping its characters).
        """
        texts, spans = [], []
        for words in sentences:
            pos, sp = 0, []
            for w in words:
                sp.append((pos, pos + len(w)))
                pos += len(w) + 1
            texts.append(" ".join(words))
            spans.append(sp)
        budget = max_len - len(self.prefix) - len(self.suffix)
        enc = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True) if texts else \
            {"input_ids": [], "offset_mapping": []}
        all_ids, all_starts = [], []
        for ids, offsets, sp in zip(enc["input_ids"], enc["offset_mapping"], spans):
            ids, offsets = list(ids)[:budget], list(offsets)[:budget]
            starts, t = [], 0
            for s, e in sp:
                while t < len(offsets) and offsets[t][1] <= s:  # tokens that end before this word
                    t += 1
                hit = t < len(offsets) and offsets[t][0] < max(e, s + 1)
                starts.append(len(self.prefix) + t if hit else -1)
            all_ids.append(list(self.prefix) + ids + list(self.suffix))
            all_starts.append(starts)
        return all_ids, all_starts

    def fingerprint(self) -> str:
        """Hash of the tokenizer + framing: the key of the tokenized-data cache."""
        return self._fingerprint


def _framing(tokenizer, cfg: dict) -> tuple[list[int], list[int], bool]:
    probe = "a b"
    bare = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(probe)["input_ids"])
    if len(full) > len(bare):
        for i in range(len(full) - len(bare) + 1):
            if full[i:i + len(bare)] == bare:
                return full[:i], full[i + len(bare):], True
    # the tokenizer's cls/bos and sep/eos, else the config's, else mmBERT's
    ids = resolve_special_ids(None, tokenizer, cfg, {"bos_id": BOS_ID, "eos_id": EOS_ID})
    return [int(ids.cls)], [int(ids.sep)], False


def load_backbone(path: str | os.PathLike, *, device: str | torch.device = "cpu",
                  tokenizer: str | os.PathLike | None = None) -> Backbone:
    """Load a bare encoder + tokenizer from a model directory (see the module docstring).

    tokenizer: a directory with tokenizer files, for model directories without them (training
    checkpoints); default: the model directory's own.
    """
    path = Path(path)
    cfg = _read_config(path)
    if tokenizer is not None and not Path(tokenizer).is_dir():
        raise FileNotFoundError(f"tokenizer directory {tokenizer} not found; pass the folder holding "
                                f"tokenizer.json")
    tokenizer = load_hf_tokenizer(tokenizer if tokenizer is not None else path, cfg)
    model = None
    name = cfg.get("model_type", "?")
    if cfg.get("model_type") == "modernbert":
        model = from_pretrained(path, head="none")
        name = "mmbert:" + name
    if model is None:
        from transformers import AutoModel

        with _quiet_transformers():
            model = AutoModel.from_pretrained(str(path))
        name = "transformers:" + type(model).__name__
    model = model.to(device).eval()
    hidden = int(cfg.get("hidden_size") or cfg.get("d_model"))
    pad = resolve_special_ids(None, tokenizer, cfg, {"pad_id": PAD_ID}).pad  # tokenizer's, config's, mmBERT's
    prefix, suffix, native = _framing(tokenizer, cfg)
    h = hashlib.sha1()
    try:
        h.update(tokenizer.backend_tokenizer.to_str().encode())
    except AttributeError:  # slow tokenizer: its vocabulary identifies it
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps([prefix, suffix, native, int(pad)]).encode())
    return Backbone(model=model, tokenizer=tokenizer, hidden_size=hidden, pad_id=int(pad), prefix=prefix,
                    suffix=suffix, native=native, name=name, _fingerprint=h.hexdigest()[:16])


def load_mlm_model(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> nn.Module:
    """The directory's encoder WITH its MLM head (for per-language MLM evaluation)."""
    path = Path(path)
    cfg = _read_config(path)
    if cfg.get("model_type") == "modernbert":
        return from_pretrained(path, head="mlm").to(device).eval()
    from transformers import AutoModelForMaskedLM

    with _quiet_transformers():
        return AutoModelForMaskedLM.from_pretrained(str(path)).to(device).eval()
