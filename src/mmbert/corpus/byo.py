"""Read a corpus directory — the embedded one or your own — and import a Hugging Face dataset into one.

    from mmbert.corpus.byo import open_corpus, import_hf_dataset
    corpus = open_corpus("my_corpus")            # <lang_Script>/ folders of .jsonl/.txt/.parquet
    for doc in corpus.documents("deu_Latn"): ...
    corpus.skipped.summary()                     # what was skipped, counted by reason
    import_hf_dataset("HuggingFaceFW/fineweb-2", "my_corpus", "deu_Latn", config="deu_Latn",
                      max_docs=100_000)          # streaming; any `datasets` source works

Layout (FineWeb-2's, and what `mmbert corpus build` writes):

    <corpus>/<iso639-3>_<Script>/*.jsonl    one JSON object per line with a "text" field
    <corpus>/<iso639-3>_<Script>/*.txt      UTF-8 plain text, documents separated by blank lines
    <corpus>/<iso639-3>_<Script>/*.parquet  a "text" column (other columns are ignored)
    <corpus>/stats.json, <corpus>/LICENSES/ optional, ignored here

Bad input never stops a read: folders that are not language tags, unsupported or empty files,
binary files (a NUL byte anywhere), invalid UTF-8 (only the line of a .jsonl, or the document of a
.txt, that holds it), malformed JSON lines, parquet files without a text column — each is skipped
and counted under a named reason (`corpus.skipped`), with example paths. Only when no
language has anything usable is there one error saying so.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from mmbert.corpus.languages import UnknownLanguageError, split_tag, to_iso639_3
from mmbert.utils import atomic_write

SUFFIXES = (".jsonl", ".txt", ".parquet")


@dataclass
class SkipLog:
    """Counts of what was skipped, by reason, with up to 3 example paths per reason."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def add(self, reason: str, where: str | os.PathLike, n: int = 1) -> None:
        self.counts[reason] += n
        if len(self.examples[reason]) < 3:
            self.examples[reason].append(str(where))

    def summary(self) -> str:
        if not self.counts:
            return "nothing skipped"
        return "skipped: " + "; ".join(f"{r} ×{n} (e.g. {', '.join(self.examples[r])})"
                                       for r, n in sorted(self.counts.items()))

    def __bool__(self) -> bool:
        return bool(self.counts)


def _is_eval_data(path: Path) -> bool:
    """True if `path` is (inside) the shared evaluation data, which must never be trained on."""
    roots = [os.environ.get("MMBERT_EVAL_DATA")]
    roots += [str(p / "shared" / "data" / "eval") for p in Path(__file__).resolve().parents]
    rp = path.resolve()
    for r in roots:
        if r and Path(r).exists():
            r = Path(r).resolve()
            if rp == r or r in rp.parents or rp in r.parents:
                return True
    return "shared/data/eval" in rp.as_posix()


def check_not_eval_data(path: str | os.PathLike) -> None:
    if _is_eval_data(Path(path)):
        raise ValueError(f"{path} is (or contains) the evaluation data; it must never be used as a training "
                         f"corpus — point --corpus at a corpus built with `mmbert corpus build` or your own")


def _valid_tag(name: str) -> bool:
    try:
        lang, _ = split_tag(name)
        to_iso639_3(lang)
        return True
    except UnknownLanguageError:
        return False


class Corpus:
    """A corpus directory: language folders and their documents, read lazily."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"corpus directory {self.root} does not exist; build one with "
                                    f"`mmbert corpus build --out {self.root}` or point at your own")
        check_not_eval_data(self.root)
        self.skipped = SkipLog()
        self._files: dict[str, list[Path]] = {}
        for d in sorted(p for p in self.root.iterdir() if p.is_dir()):
            if d.name == "LICENSES" or d.name.startswith("."):
                continue
            if not _valid_tag(d.name):
                self.skipped.add("unknown-language-folder", d)
                continue
            files = []
            for f in sorted(p for p in d.rglob("*") if p.is_file() and not p.name.startswith(".")):
                if f.suffix not in SUFFIXES:
                    self.skipped.add("unsupported-file", f)
                elif f.stat().st_size == 0:
                    self.skipped.add("empty-file", f)
                else:
                    files.append(f)
            if files:
                self._files[d.name] = files
            else:
                self.skipped.add("empty-language", d)
        if not self._files:
            raise ValueError(f"corpus directory {self.root} has no usable language folder "
                             f"(<iso639-3>_<Script>/ with .jsonl, .txt or .parquet files); {self.skipped.summary()}")

    @property
    def languages(self) -> list[str]:
        return sorted(self._files)

    def files(self, lang: str) -> list[Path]:
        if lang not in self._files:
            raise KeyError(f"language {lang!r} is not in corpus {self.root} (has {len(self._files)}: "
                           f"{', '.join(self.languages[:8])}{' …' if len(self._files) > 8 else ''})")
        return self._files[lang]

    def size_bytes(self, lang: str) -> int:
        """On-disk size of a language's files (a cheap proxy for its text size, used for sampling)."""
        return sum(f.stat().st_size for f in self.files(lang))

    def documents(self, lang: str) -> Iterator[str]:
        """The language's documents in a fixed order (files sorted by name, file order inside)."""
        n = 0
        for f in self.files(lang):
            for doc in _read_file(f, self.skipped):
                if doc.strip():
                    n += 1
                    yield doc
        if n == 0:
            self.skipped.add("empty-language", self.root / lang)


def _read_file(path: Path, skipped: SkipLog) -> Iterator[str]:
    """Documents of one file. A NUL byte anywhere makes it a binary file (skipped whole); invalid
    UTF-8 costs only the line (.jsonl) or document (.txt) it is in."""
    if path.suffix == ".parquet":
        yield from _read_parquet(path, skipped)
        return
    if _has_nul(path):
        skipped.add("binary-file", path)
        return
    if path.suffix == ".txt":
        data = path.read_bytes().removeprefix(b"\xef\xbb\xbf").replace(b"\r\n", b"\n")
        good = bad = 0
        for j, raw in enumerate(re.split(rb"\n[ \t\r\f\v]*\n", data), 1):
            if (d := _decode(raw, f"{path} (document {j})", skipped)) is None:
                bad += 1
                continue
            if d.strip():
                good += 1
                yield d.strip("\n")
        if not good and not bad:
            skipped.add("empty-file", path)
        return
    good = bad = 0
    with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            if i == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            if (line := _decode(raw, f"{path}:{i}", skipped)) is None:
                bad += 1
                continue
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                doc = obj["text"]
                if not isinstance(doc, str):
                    raise TypeError
            except (json.JSONDecodeError, KeyError, TypeError):
                skipped.add("bad-jsonl-line", f"{path}:{i}")
                continue
            good += 1
            yield doc
    if good == 0 and not bad:
        skipped.add("empty-file", path)


def _decode(raw: bytes, where: str, skipped: SkipLog) -> str | None:
    """`raw` as UTF-8, or None once it is logged as invalid-utf8 at `where` (the caller skips it)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        skipped.add("invalid-utf8", where)
        return None


def _has_nul(path: Path, block: int = 1 << 20) -> bool:
    """True when the file holds a NUL byte anywhere (text never does): read in 1 MiB blocks, each
    searched at memchr speed — a whole-file check for about the cost of reading it once."""
    with open(path, "rb") as f:
        while chunk := f.read(block):
            if b"\x00" in chunk:
                return True
    return False


def _read_parquet(path: Path, skipped: SkipLog, column: str = "text") -> Iterator[str]:
    import pyarrow.parquet as pq
    try:
        pf = pq.ParquetFile(path)
    except Exception:  # pyarrow raises ArrowInvalid / OSError on non-parquet data
        skipped.add("bad-parquet", path)
        return
    if column not in pf.schema_arrow.names:
        skipped.add("parquet-no-text-column", path)
        return
    for batch in pf.iter_batches(columns=[column], batch_size=4096):
        for doc in batch.column(0).to_pylist():
            if isinstance(doc, str):
                yield doc


def open_corpus(root: str | os.PathLike) -> Corpus:
    """Open a corpus directory (see the module docstring for the layout and what gets skipped)."""
    return Corpus(root)


def import_hf_dataset(path: str, out_dir: str | os.PathLike, lang: str, *, config: str | None = None,
                      split: str = "train", text_column: str = "text", data_files=None,
                      max_docs: int | None = None, max_bytes: int | None = None,
                      streaming: bool = True, progress: bool = True) -> dict[str, int]:
    """Stream a Hugging Face `datasets` source into `<out_dir>/<lang>/hf-<name>.jsonl` (atomically).

    `path`/`config`/`split`/`data_files` are passed to `datasets.load_dataset` (e.g.
    ("HuggingFaceFW/fineweb-2", config="deu_Latn") online, or ("parquet", data_files=...) offline).
    Stops after `max_docs` documents or `max_bytes` of text. Returns {"docs": n, "bytes": b}.
    """
    import datasets
    from tqdm import tqdm

    split_tag(lang)  # clear error for a bad tag before any download
    out = Path(out_dir) / lang
    check_not_eval_data(out_dir)
    ds = datasets.load_dataset(path, config, split=split, streaming=streaming, data_files=data_files)
    cols = getattr(ds, "column_names", None) or list(getattr(ds, "features", None) or [])
    if cols and text_column not in cols:
        raise ValueError(f"dataset {path!r} has no {text_column!r} column (columns: {cols}); "
                         f"pass text_column=<name of the text column>")
    out.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", f"hf-{path.rstrip('/').split('/')[-1]}" + (f"-{config}" if config else ""))
    n = nbytes = 0

    def write(tmp: str) -> None:
        nonlocal n, nbytes
        with open(tmp, "w", encoding="utf-8") as f:
            for row in tqdm(ds, desc=f"import {lang}", unit="doc", disable=not progress, total=max_docs):
                doc = row.get(text_column)
                if not isinstance(doc, str) or not doc.strip():
                    continue
                f.write(json.dumps({"text": doc, "source": name}, ensure_ascii=False) + "\n")
                n += 1
                nbytes += len(doc.encode("utf-8"))
                if (max_docs is not None and n >= max_docs) or (max_bytes is not None and nbytes >= max_bytes):
                    break
        if n == 0:  # raised inside atomic_write: the temp file is removed, nothing is written
            raise ValueError(f"dataset {path!r} ({config or 'default'}, {split}) yielded no text in column "
                             f"{text_column!r}; nothing written")

    atomic_write(out / f"{name}.jsonl", write)
    return {"docs": n, "bytes": nbytes}


if __name__ == "__main__":  # pragma: no cover
    c = open_corpus(sys.argv[1])
    print(len(c.languages), "languages;", c.skipped.summary())
