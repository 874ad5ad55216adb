"""Token shards: the on-disk format between the tokenizer and the data stream.

One folder per corpus (`<shards>`), one sub-folder per language, one pair of flat files per split:

    <shards>/index.json                     {"format": "mmbert-shards/1", "dtype": "uint16"|"uint32",
                                             "vocab_size": V, "tokenizer": {...},
                                             "languages": {"deu_Latn": {"train": {"tokens": T, "docs": D},
                                                                        "heldout": {...}}, ...}}
    <shards>/<lang_Script>/<split>.tokens   token ids, documents back to back (np.memmap, index dtype)
    <shards>/<lang_Script>/<split>.offsets  uint64, docs+1 entries, offsets[0] = 0, offsets[-1] = T
    <shards>/tokenizer/                     a byte copy of the tokenizer the shards were made with
                                            (index.json "tokenizer": {"sha256", "path", "copy", ...})

Documents are stored WITHOUT <bos>/<eos>: `mmbert.data.packing` adds the framing per chunk, so a
shard can be re-chunked for any sequence length. Files are written to temporary names and moved into
place with `os.replace`, so a crash never leaves a half-written shard under its final name.

    from mmbert.data.shards import ShardWriter, write_index, ShardIndex, open_shard
    with ShardWriter("out/shards", "deu_Latn", "train", "uint16") as w:
        for ids in tokenized_documents:          # 1-D integer arrays, no bos/eos
            w.add(ids)
    write_index("out/shards", {"deu_Latn": {"train": w.counts}}, "uint16", 32768, {"name": "..."})
    shard = open_shard("out/shards", "deu_Latn")  # len(shard) == docs, shard[i] -> np.ndarray
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from mmbert.tokenizer import load_tokenizer
from mmbert.utils import atomic_write, publish_dir

FORMAT = "mmbert-shards/1"
DTYPES = ("uint16", "uint32")
SPLITS = ("train", "heldout")


class ShardError(ValueError):
    """A shard folder that exists but is unusable (corrupt, inconsistent, wrong format)."""


class ShardNotFoundError(FileNotFoundError):
    """A shard folder, index or language/split that is not there."""


def _check_dtype(dtype: str | np.dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt.name not in DTYPES:
        raise ShardError(f"shard dtype {dt.name!r} is not supported; use one of {DTYPES} "
                         f"(uint16 when the vocabulary has at most 65,536 entries)")
    return dt


class ShardWriter:
    """Append documents of one (language, split) and publish the pair of files atomically on close.

    `add(ids)` appends one document (a 1-D array of non-negative integer ids that fit `dtype`; no
    bos/eos). Empty documents are skipped (`add` returns False) since they carry no tokens to train
    on. On a clean `close()` / context exit the temp files are renamed to `<split>.tokens` and
    `<split>.offsets`; when the `with` block raises, the temp files are removed and any previous
    shard under the final names is left untouched. After closing, `.tokens`, `.docs` and `.counts`
    (= {"tokens": T, "docs": D}, the entry `write_index` expects) describe what was written.
    """

    def __init__(self, root: str | os.PathLike, lang: str, split: str = "train",
                 dtype: str | np.dtype = "uint16"):
        if not lang or "/" in lang or lang.startswith("."):
            raise ShardError(f"bad language name {lang!r}; use the corpus folder name like 'deu_Latn'")
        if split not in SPLITS:
            raise ShardError(f"bad split {split!r}; use one of {SPLITS}")
        self.dtype = _check_dtype(dtype)
        self.dir = Path(root) / lang
        self.dir.mkdir(parents=True, exist_ok=True)
        self.lang, self.split = lang, split
        self.tokens_path = self.dir / f"{split}.tokens"
        self.offsets_path = self.dir / f"{split}.offsets"
        fd, self._tmp_tokens = tempfile.mkstemp(dir=self.dir, prefix=f".{split}.tokens.", suffix=".tmp")
        self._f = os.fdopen(fd, "wb")
        # offsets go to their own temp file as they come (memory stays flat for any number of docs)
        fd, self._tmp_offsets = tempfile.mkstemp(dir=self.dir, prefix=f".{split}.offsets.", suffix=".tmp")
        self._off_f = os.fdopen(fd, "wb")
        self._off_f.write(np.zeros(1, np.uint64).tobytes())
        self._max = np.iinfo(self.dtype).max
        self.tokens = 0
        self.docs = 0
        self.closed = False

    def add(self, ids: Any) -> bool:
        """Append one document; returns False (and stores nothing) for an empty one."""
        if self.closed:
            raise ShardError(f"ShardWriter for {self.lang}/{self.split} is already closed")
        a = np.asarray(ids)
        if a.ndim != 1:
            raise ShardError(f"a document must be a 1-D array of token ids, got shape {a.shape}")
        if a.size == 0:
            return False
        self._write_ids(a)
        self.tokens += int(a.size)
        self.docs += 1
        self._off_f.write(np.uint64(self.tokens).tobytes())
        return True

    def _write_ids(self, a: np.ndarray) -> None:
        """Check a non-empty id array (integers within the dtype) and append it to the tokens file."""
        if not np.issubdtype(a.dtype, np.integer):
            raise ShardError(f"token ids must be integers, got dtype {a.dtype}")
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > self._max:
            raise ShardError(f"token id out of range [{lo}, {hi}] for dtype {self.dtype.name}; "
                             f"write the shards with dtype='uint32' for vocabularies above 65,536")
        self._f.write(a.astype(self.dtype, copy=False).tobytes())

    def add_many(self, ids: np.ndarray, lengths: np.ndarray) -> int:
        """Append consecutive documents at once: `ids` holds them back to back, `lengths` their
        sizes (empty ones are skipped, as in `add`). The same files as `add` per document;
        returns the number of documents stored."""
        if self.closed:
            raise ShardError(f"ShardWriter for {self.lang}/{self.split} is already closed")
        a, n = np.asarray(ids), np.asarray(lengths, dtype=np.uint64)
        if a.ndim != 1 or int(n.sum()) != a.size:
            raise ShardError(f"add_many: lengths sum to {int(n.sum())} but there are {a.size} ids")
        if a.size:
            self._write_ids(a)
        n = n[n > 0]
        self._off_f.write((self.tokens + np.cumsum(n, dtype=np.uint64)).astype(np.uint64).tobytes())
        self.tokens += int(a.size)
        self.docs += int(n.size)
        return int(n.size)

    @property
    def counts(self) -> dict[str, int]:
        return {"tokens": self.tokens, "docs": self.docs}

    def close(self) -> dict[str, int]:
        """Publish both files atomically (offsets last: a tokens file without matching offsets fails
        validation in `open_shard`). Returns `counts`."""
        if self.closed:
            return self.counts
        self._f.close()
        self._off_f.close()
        self.closed = True
        tmp_off = self._tmp_offsets
        try:
            os.replace(self._tmp_tokens, self.tokens_path)
            os.replace(tmp_off, self.offsets_path)
        except BaseException:
            Path(tmp_off).unlink(missing_ok=True)
            Path(self._tmp_tokens).unlink(missing_ok=True)
            raise
        return self.counts

    def abort(self) -> None:
        """Drop what was written; the final names are not touched."""
        if not self.closed:
            self._f.close()
            self._off_f.close()
            self.closed = True
        Path(self._tmp_tokens).unlink(missing_ok=True)
        Path(self._tmp_offsets).unlink(missing_ok=True)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_index(root: str | os.PathLike, languages: dict[str, dict[str, dict[str, int]]],
                dtype: str | np.dtype, vocab_size: int, tokenizer_info: dict | None = None) -> Path:
    """Write `<root>/index.json` atomically. `languages` = {lang: {split: {"tokens": T, "docs": D}}}."""
    dt = _check_dtype(dtype)
    if int(vocab_size) <= 0 or int(vocab_size) > np.iinfo(dt).max + 1:
        raise ShardError(f"vocab_size {vocab_size} does not fit dtype {dt.name}")
    langs: dict[str, dict[str, dict[str, int]]] = {}
    for lang in sorted(languages):
        splits = languages[lang]
        langs[lang] = {}
        for split, c in splits.items():
            if split not in SPLITS:
                raise ShardError(f"bad split {split!r} for {lang}; use one of {SPLITS}")
            langs[lang][split] = {"tokens": int(c["tokens"]), "docs": int(c["docs"])}
    doc = {"format": FORMAT, "dtype": dt.name, "vocab_size": int(vocab_size),
           "tokenizer": dict(tokenizer_info or {}), "languages": langs}
    path = Path(root) / "index.json"
    atomic_write(path, json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    return path


@dataclass
class ShardIndex:
    """The parsed `index.json` of a shard folder (see the module docstring)."""

    root: Path
    dtype: np.dtype
    vocab_size: int
    tokenizer: dict
    counts: dict[str, dict[str, dict[str, int]]] = field(repr=False)

    @classmethod
    def load(cls, root: str | os.PathLike) -> "ShardIndex":
        root = Path(root)
        path = root / "index.json"
        if not path.is_file():
            raise ShardNotFoundError(f"no shard index at {path}; build shards first "
                                     f"(`mmbert data prepare`) or point at the folder holding index.json")
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ShardError(f"corrupt shard index {path}: {e}; rebuild the shards") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
            raise ShardError(f"{path} has format {got!r}, expected {FORMAT!r}; rebuild the shards")
        try:
            dt = _check_dtype(doc["dtype"])
            vocab = int(doc["vocab_size"])
            counts = {str(lang): {str(s): {"tokens": int(c["tokens"]), "docs": int(c["docs"])}
                                  for s, c in splits.items()}
                      for lang, splits in doc["languages"].items()}
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise ShardError(f"corrupt shard index {path} ({type(e).__name__}: {e}); rebuild the shards") from None
        return cls(root=root, dtype=dt, vocab_size=vocab, tokenizer=doc.get("tokenizer") or {}, counts=counts)

    @property
    def languages(self) -> list[str]:
        return sorted(self.counts)

    def _entry(self, lang: str, split: str) -> dict[str, int]:
        if lang not in self.counts:
            raise ShardNotFoundError(f"language {lang!r} has no shard in {self.root}; "
                                     f"available: {', '.join(self.languages) or '(none)'}")
        if split not in self.counts[lang]:
            raise ShardNotFoundError(f"language {lang!r} has no {split!r} split in {self.root}; "
                                     f"it has: {', '.join(sorted(self.counts[lang]))}")
        return self.counts[lang][split]

    def tokens(self, lang: str, split: str = "train") -> int:
        return self._entry(lang, split)["tokens"]

    def docs(self, lang: str, split: str = "train") -> int:
        return self._entry(lang, split)["docs"]

    def has(self, lang: str, split: str = "train") -> bool:
        return lang in self.counts and split in self.counts[lang]


class Shard:
    """Read-only view of one (language, split): `len(shard)` documents, `shard[i]` → ids (np.ndarray,
    a view into the memory map), `shard.num_tokens`, `shard.doc_lengths` (np.int64 [docs])."""

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray, lang: str, split: str):
        self.tokens, self.offsets, self.lang, self.split = tokens, offsets, lang, split

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"document {i} out of range for {self.lang}/{self.split} ({n} docs)")
        return self.tokens[int(self.offsets[i]):int(self.offsets[i + 1])]

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])

    @property
    def doc_lengths(self) -> np.ndarray:
        return np.diff(self.offsets.astype(np.int64))

    def __repr__(self) -> str:
        return f"Shard({self.lang}/{self.split}: {len(self)} docs, {self.num_tokens} tokens)"


# Files up to this size are read into memory instead of memory-mapped: every np.memmap holds a file
# descriptor, and a 1,833-language phase would otherwise need ~3,700 of them (default limit: 1,024).
SMALL_FILE_BYTES = 1 << 20


def _map_or_read(path: Path, dtype: np.dtype, nbytes: int) -> np.ndarray:
    if nbytes == 0:       # np.memmap refuses empty files; an empty shard is legal on disk
        return np.zeros(0, dtype=dtype)
    if nbytes <= SMALL_FILE_BYTES:
        return np.fromfile(path, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def open_shard(root: str | os.PathLike, lang: str, split: str = "train",
               index: ShardIndex | None = None) -> Shard:
    """Memory-map one shard and validate it against its offsets and the index (clear error if not)."""
    index = index or ShardIndex.load(root)
    expect = index._entry(lang, split)
    d = Path(root) / lang
    tok_path, off_path = d / f"{split}.tokens", d / f"{split}.offsets"
    for p in (tok_path, off_path):
        if not p.is_file():
            raise ShardNotFoundError(f"missing shard file {p} (listed in {Path(root) / 'index.json'}); "
                                     f"rebuild the shards")
    itemsize = index.dtype.itemsize
    tok_bytes, off_bytes = tok_path.stat().st_size, off_path.stat().st_size
    if tok_bytes % itemsize or off_bytes % 8 or off_bytes == 0:
        raise ShardError(f"corrupt shard {d}/{split}.*: file sizes {tok_bytes}/{off_bytes} bytes are not "
                         f"whole {index.dtype.name}/uint64 arrays; rebuild the shards")
    n_tok = tok_bytes // itemsize
    tokens = _map_or_read(tok_path, index.dtype, tok_bytes)
    offsets = _map_or_read(off_path, np.dtype(np.uint64), off_bytes)
    if int(offsets[0]) != 0 or int(offsets[-1]) != n_tok or (len(offsets) > 1 and
                                                               bool(np.any(np.diff(offsets.astype(np.int64)) < 0))):
        raise ShardError(f"corrupt shard {d}/{split}.*: offsets (first {int(offsets[0])}, last "
                         f"{int(offsets[-1])}) do not match {n_tok} tokens or are not increasing; rebuild the shards")
    if len(offsets) - 1 != expect["docs"] or n_tok != expect["tokens"]:
        raise ShardError(f"shard {d}/{split}.* holds {len(offsets) - 1} docs / {n_tok} tokens but index.json "
                         f"says {expect['docs']} / {expect['tokens']}; rebuild the index or the shards")
    return Shard(tokens, offsets, lang, split)


# ----------------------------------------------------------------------------- the shards' tokenizer
TOKENIZER_COPY = "tokenizer"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def sha256_file(path: str | os.PathLike) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def copy_tokenizer(tokenizer: str | os.PathLike, root: str | os.PathLike) -> str:
    """Byte copy of the tokenizer (tokenizer.json and its two metadata files) into
    `<root>/tokenizer/`, written whole; returns the path of the copied tokenizer.json relative to root."""
    import shutil

    src = Path(tokenizer)
    src_dir = src if src.is_dir() else src.parent
    tok_json = src / "tokenizer.json" if src.is_dir() else src
    with publish_dir(Path(root) / TOKENIZER_COPY) as tmp:
        shutil.copyfile(tok_json, tmp / "tokenizer.json")
        for name in _TOKENIZER_FILES[1:]:
            if (src_dir / name).is_file():
                shutil.copyfile(src_dir / name, tmp / name)
    return f"{TOKENIZER_COPY}/tokenizer.json"


def check_tokenizer(index: "ShardIndex", tokenizer_json: str | os.PathLike, role: str = "the tokenizer") -> None:
    """ShardError naming both files when `tokenizer_json` is not the tokenizer the shards were made
    with (index.json's sha256); nothing to check when the index records none."""
    want = index.tokenizer.get("sha256") if isinstance(index.tokenizer, dict) else None
    if not want or not Path(tokenizer_json).is_file():
        return
    got = sha256_file(tokenizer_json)
    if got != want:
        copy = index.root / TOKENIZER_COPY / "tokenizer.json"
        made = f"{copy} (their copy)" if copy.is_file() else f"{index.tokenizer.get('path')} (sha256 {want[:12]}…)"
        raise ShardError(f"{role} {tokenizer_json} (sha256 {got[:12]}…) is not the tokenizer the shards in "
                         f"{index.root} were made with: {made}; use that tokenizer, or re-run `mmbert data "
                         f"prepare` with this one")


def shards_tokenizer(index: "ShardIndex", root: str | os.PathLike | None = None):
    """The tokenizer the shards were made with: their copy (`<shards>/tokenizer/`), else index.json's
    "path". ShardError when the file at "path" has changed since (naming both files); None when
    neither exists (shards made before copies were kept, tokenizer since deleted)."""
    info = index.tokenizer if isinstance(index.tokenizer, dict) else {}
    root = Path(root) if root is not None else index.root
    copy = root / TOKENIZER_COPY / "tokenizer.json"
    path = info.get("path")
    orig = (Path(path) / "tokenizer.json" if Path(path).is_dir() else Path(path)) if path else None
    if orig is not None and orig.is_file():
        check_tokenizer(index, orig, role="the tokenizer at")
    if copy.is_file():
        if info.get("sha256") and sha256_file(copy) != info["sha256"]:
            raise ShardError(f"{copy} does not match the sha256 in {root / 'index.json'}; the shards' "
                             f"tokenizer copy is damaged — re-run `mmbert data prepare`")
        return load_tokenizer(copy.parent)
    if orig is not None and orig.is_file():
        return load_tokenizer(path)
    return None
