"""Evaluation data: one small reader per dataset folder of the eval data directory.

The data directory (read-only, never copied into the repo) holds the folders described in its
SOURCES.md: sib200/, xnli/, pawsx/, wikiann/, ud/, glue/sst2/, nusax/, tatoeba/, xquad/. It is found
in this order: an explicit `data_dir`, the MMBERT_EVAL_DATA environment variable, then
`../shared/data/eval` next to the repository.

    from mmbert.eval import data
    root = data.resolve_data_dir()                       # Path (may not exist: check data.available)
    train = data.load_sib200(root, "eng_Latn", "train")  # list[Example]
    sents = data.load_wikiann(root, "fr")                # list[TaggedSentence] (dev)

Labels are mapped through FIXED label lists defined here (not "labels seen in this file"), so the id
of a label is the same in every language and every split. An unknown label, a wrong column count or
an unreadable line raises EvalDataError naming the file and the 1-based line number; so does a
degenerate split (no rows, or one label throughout: `check_split`).

The generic readers at the end (`read_table` for TSV/CSV, `read_jsonl`, `read_conll`, `read_conllu`,
`read_lines`) serve the task files (mmbert.eval.taskfile): they return raw records with line numbers,
and the runner maps labels through each task's label set.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

ENV_VAR = "MMBERT_EVAL_DATA"

# Fixed label inventories: index = label id, identical across languages.
SIB200_LABELS = ("entertainment", "geography", "health", "politics", "science/technology", "sports",
                 "travel")
XNLI_LABELS = ("entailment", "neutral", "contradiction")
PAWSX_LABELS = ("0", "1")  # 1 = paraphrase
SST2_LABELS = ("0", "1")  # 1 = positive
NUSAX_LABELS = ("negative", "neutral", "positive")
WIKIANN_TAGS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC")
UPOS_TAGS = ("ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON", "PROPN",
             "PUNCT", "SCONJ", "SYM", "VERB", "X")

DATASETS = ("sib200", "xnli", "pawsx", "wikiann", "ud", "glue/sst2", "nusax", "tatoeba", "xquad")


class EvalDataError(ValueError):
    """A malformed line in an eval data file: the message names the file and the line number."""


class EvalDataMissing(FileNotFoundError):
    """The data directory or a dataset folder/file is absent; the message says how to point at it."""


@dataclass(frozen=True)
class Example:
    """One classification example (text pair for NLI / paraphrase tasks)."""

    text: str
    label: int
    text_pair: str | None = None
    id: str | None = None


@dataclass(frozen=True)
class ChoiceExample:
    """One multiple-choice question: a context (premise + optional question), k choices, the right one."""

    context: str
    choices: tuple[str, ...]
    label: int


@dataclass(frozen=True)
class TaggedSentence:
    """One sentence as words with one tag id per word (NER BIO tags or UPOS)."""

    words: tuple[str, ...]
    tags: tuple[int, ...]


# ----------------------------------------------------------------------------- data directory
def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Explicit argument > $MMBERT_EVAL_DATA > <repo>/../shared/data/eval. Does not check existence."""
    if data_dir:
        return Path(data_dir).expanduser()
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    repo = Path(__file__).resolve().parents[3]  # src/mmbert/eval/data.py -> repo root
    return (repo / ".." / "shared" / "data" / "eval").resolve()


def available(root: str | os.PathLike | None) -> dict[str, bool]:
    """Which dataset folders exist under `root` (all False when root itself is absent)."""
    root = Path(root) if root is not None else None
    return {name: bool(root is not None and (root / name).is_dir()) for name in DATASETS}


def require_dir(root: Path, name: str) -> Path:
    d = Path(root) / name
    if not d.is_dir():
        raise EvalDataMissing(
            f"eval dataset folder {d} not found; pass --data-dir (or set ${ENV_VAR}) to the folder "
            f"holding SOURCES.md and {name}/")
    return d


# ----------------------------------------------------------------------------- low-level readers
def _label_id(labels: tuple[str, ...], value: str, path: Path, lineno: int) -> int:
    try:
        return labels.index(value.strip())
    except ValueError:
        raise EvalDataError(f"{path}:{lineno}: unknown label {value.strip()!r}; expected one of "
                            f"{', '.join(labels)} (fix or remove the line)") from None


def check_split(path: Path, items: list, labels: Sequence[Any] | None = None,
                names: Sequence[str] | None = None) -> list:
    """Refuse a degenerate split: zero examples, or (classification) a single label throughout.

    labels: the label of every example (default: `.label` of each item, or every tag of a
    TaggedSentence; names: the label list those ids index); a file in which every example has the same
    label cannot train or test a classifier.
    """
    if not items:
        raise EvalDataError(f"{path}: no examples (empty split); fill the file or point the task at "
                            f"the right one")
    if labels is None:
        first = items[0]
        if isinstance(first, TaggedSentence):
            labels = [t for s in items for t in s.tags]
        elif isinstance(first, Example):
            labels = [e.label for e in items]
    if labels is not None and len(items) > 1 and len(set(labels)) < 2:
        value = next(iter(labels), None)
        value = names[value] if names is not None and isinstance(value, int) else value
        raise EvalDataError(f"{path}: every example has the same label ({value!r}); a classification split "
                            f"needs at least two labels: check the label column / the file")
    return items


def _tsv_rows(path: Path, ncols: int, header: tuple[str, ...] | None = None
              ) -> Iterator[tuple[int, list[str]]]:
    """Yield (1-based line number, fields) of a tab-separated file with exactly `ncols` columns.

    Plain split on tabs, no quote handling: these files contain literal quote characters.
    """
    if not path.is_file():
        raise EvalDataMissing(f"eval data file {path} not found; check --data-dir / ${ENV_VAR}")
    with open(path, encoding="utf-8", newline="") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if lineno == 1 and header is not None:
                if tuple(c.strip() for c in line.split("\t")) != header:
                    raise EvalDataError(f"{path}:1: expected header {'<TAB>'.join(header)!r}, "
                                        f"got {line[:80]!r}")
                continue
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != ncols:
                raise EvalDataError(f"{path}:{lineno}: expected {ncols} tab-separated columns, got "
                                    f"{len(fields)}: {line[:80]!r}")
            yield lineno, fields


# ----------------------------------------------------------------------------- SIB-200
def sib200_languages(root: Path) -> list[str]:
    d = require_dir(root, "sib200")
    return sorted(p.name for p in d.iterdir() if p.is_dir())


def load_sib200(root: Path, lang: str, split: str = "test") -> list[Example]:
    """sib200/<lang_Script>/<split>.tsv: header index_id, category, text. id = index_id (parallel)."""
    path = require_dir(root, "sib200") / lang / f"{split}.tsv"
    return check_split(path, [Example(text=f[2], label=_label_id(SIB200_LABELS, f[1], path, n), id=f[0].strip())
                              for n, f in _tsv_rows(path, 3, header=("index_id", "category", "text"))],
                       names=SIB200_LABELS)


# ----------------------------------------------------------------------------- XNLI, PAWS-X
def _pair_langs(root: Path, name: str) -> list[str]:
    d = require_dir(root, name)
    return sorted(p.name[len("dev-"):-len(".tsv")] for p in d.glob("dev-*.tsv"))


def xnli_languages(root: Path) -> list[str]:
    return _pair_langs(root, "xnli")


def pawsx_languages(root: Path) -> list[str]:
    return _pair_langs(root, "pawsx")


def load_xnli(root: Path, lang: str) -> list[Example]:
    """xnli/dev-<ll>.tsv: headerless premise, hypothesis, label. Rows are parallel across languages."""
    path = require_dir(root, "xnli") / f"dev-{lang}.tsv"
    return check_split(path, [Example(text=f[0], text_pair=f[1], label=_label_id(XNLI_LABELS, f[2], path, n),
                                      id=str(i)) for i, (n, f) in enumerate(_tsv_rows(path, 3))], names=XNLI_LABELS)


def load_pawsx(root: Path, lang: str) -> list[Example]:
    """pawsx/dev-<ll>.tsv: headerless s1, s2, 0/1. Rows are parallel across languages."""
    path = require_dir(root, "pawsx") / f"dev-{lang}.tsv"
    return check_split(path, [Example(text=f[0], text_pair=f[1], label=_label_id(PAWSX_LABELS, f[2], path, n),
                                      id=str(i)) for i, (n, f) in enumerate(_tsv_rows(path, 3))], names=PAWSX_LABELS)


# ----------------------------------------------------------------------------- SST-2, NusaX
def load_sst2(root: Path, split: str = "test") -> list[Example]:
    """glue/sst2/<split>.tsv: header sentence, label (test = the labelled GLUE dev set)."""
    path = require_dir(root, "glue/sst2") / f"{split}.tsv"
    return check_split(path, [Example(text=f[0].strip(), label=_label_id(SST2_LABELS, f[1], path, n))
                              for n, f in _tsv_rows(path, 2, header=("sentence", "label"))], names=SST2_LABELS)


def nusax_languages(root: Path) -> list[str]:
    d = require_dir(root, "nusax") / "sentiment"
    return sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []


def load_nusax(root: Path, language: str, split: str = "test") -> list[Example]:
    """nusax/sentiment/<language>/<split>.csv: CSV (quoted fields) with header id,text,label."""
    path = require_dir(root, "nusax") / "sentiment" / language / f"{split}.csv"
    if not path.is_file():
        raise EvalDataMissing(f"eval data file {path} not found; check --data-dir / ${ENV_VAR}")
    out = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        try:
            for row in reader:
                n = reader.line_num
                if n == 1 and [c.strip() for c in row] == ["id", "text", "label"]:
                    continue
                if n == 1:
                    raise EvalDataError(f"{path}:1: expected header 'id,text,label', got {row!r}")
                if not row:
                    continue
                if len(row) != 3:
                    raise EvalDataError(f"{path}:{n}: expected 3 comma-separated fields (id,text,label), "
                                        f"got {len(row)}")
                out.append(Example(text=row[1], label=_label_id(NUSAX_LABELS, row[2], path, n), id=row[0]))
        except csv.Error as e:
            raise EvalDataError(f"{path}:{reader.line_num}: unreadable CSV line ({e})") from None
    return check_split(path, out, names=NUSAX_LABELS)


# ----------------------------------------------------------------------------- WikiANN, UD
def wikiann_languages(root: Path) -> list[str]:
    return _pair_langs(root, "wikiann")


def _read_tagged(path: Path, parse_line, tags: tuple[str, ...]) -> list[TaggedSentence]:
    """Sentences separated by blank lines; `parse_line(fields)` → (word, tag) or None to skip."""
    if not path.is_file():
        raise EvalDataMissing(f"eval data file {path} not found; check --data-dir / ${ENV_VAR}")
    sents: list[TaggedSentence] = []
    words: list[str] = []
    ids: list[int] = []
    with open(path, encoding="utf-8", newline="") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                if words:
                    sents.append(TaggedSentence(tuple(words), tuple(ids)))
                    words, ids = [], []
                continue
            parsed = parse_line(line, path, lineno)
            if parsed is None:
                continue
            word, tag = parsed
            words.append(word)
            ids.append(_label_id(tags, tag, path, lineno))
    if words:
        sents.append(TaggedSentence(tuple(words), tuple(ids)))
    return check_split(path, sents, names=tags)


def _wikiann_line(line: str, path: Path, lineno: int):
    fields = line.split("\t")
    if len(fields) != 2:
        raise EvalDataError(f"{path}:{lineno}: expected 'token<TAB>TAG', got {len(fields)} columns: "
                            f"{line[:80]!r}")
    return fields[0], fields[1]


def load_wikiann(root: Path, lang: str, split: str = "dev") -> list[TaggedSentence]:
    """wikiann/<split>-<ll>.tsv: token<TAB>BIO-tag per line, blank line between sentences."""
    return _read_tagged(require_dir(root, "wikiann") / f"{split}-{lang}.tsv", _wikiann_line, WIKIANN_TAGS)


def _conllu_line(line: str, path: Path, lineno: int):
    if line.startswith("#"):
        return None
    fields = line.split("\t")
    if len(fields) != 10:
        raise EvalDataError(f"{path}:{lineno}: CoNLL-U lines have 10 tab-separated columns, got "
                            f"{len(fields)}: {line[:80]!r}")
    tok_id = fields[0]
    if "-" in tok_id or "." in tok_id:  # multiword range (1-2) or empty node (1.1): not a word
        return None
    if not tok_id.isdigit():
        raise EvalDataError(f"{path}:{lineno}: CoNLL-U ID column must be an integer, got {tok_id!r}")
    return fields[1], fields[3]  # FORM, UPOS


def load_conllu(path: str | os.PathLike) -> list[TaggedSentence]:
    """A CoNLL-U file → sentences of (FORM, UPOS); skips comments, `1-2` ranges and `1.1` empty nodes."""
    return _read_tagged(Path(path), _conllu_line, UPOS_TAGS)


def ud_treebanks(root: Path) -> dict[str, dict[str, Path]]:
    """{"UD_English-EWT": {"dev": path, "test": path}, ...} for every treebank folder present."""
    d = require_dir(root, "ud")
    out: dict[str, dict[str, Path]] = {}
    for tb in sorted(p for p in d.iterdir() if p.is_dir()):
        splits = {}
        for f in sorted(tb.glob("*.conllu")):
            split = f.stem.rsplit("-", 1)[-1]  # xx_yyy-ud-test -> test
            splits[split] = f
        if splits:
            out[tb.name] = splits
    return out


# ----------------------------------------------------------------------------- Tatoeba, XQuAD
def tatoeba_languages(root: Path) -> list[str]:
    d = require_dir(root, "tatoeba")
    langs = {p.name.split(".")[1].split("-")[0] for p in d.glob("tatoeba.*-eng.eng")}
    return sorted(langs)


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise EvalDataMissing(f"eval data file {path} not found; check --data-dir / ${ENV_VAR}")
    with open(path, encoding="utf-8", newline="") as f:
        return [line.rstrip("\r\n") for line in f]


def load_tatoeba(root: Path, lang: str) -> tuple[list[str], list[str]]:
    """tatoeba/tatoeba.<xxx>-eng.{xxx,eng}: line-aligned (xxx sentences, English sentences)."""
    d = require_dir(root, "tatoeba")
    src, eng = d / f"tatoeba.{lang}-eng.{lang}", d / f"tatoeba.{lang}-eng.eng"
    a, b = _lines(src), _lines(eng)
    if not a:
        raise EvalDataError(f"{src}: empty file; a bitext file needs at least one line")
    if len(a) != len(b):
        n = min(len(a), len(b)) + 1
        raise EvalDataError(f"{src if len(a) < len(b) else eng}:{n}: line-aligned pair files differ in "
                            f"length ({len(a)} vs {len(b)} lines); the shorter one ends here")
    return a, b


def xquad_languages(root: Path) -> list[str]:
    d = require_dir(root, "xquad")
    return sorted(p.name.split(".")[1] for p in d.glob("xquad.*.json"))


def xquad_file(root: Path, lang: str) -> Path:
    """xquad/xquad.<ll>.json (SQuAD v1.1; read with `load_squad`)."""
    return require_dir(root, "xquad") / f"xquad.{lang}.json"


@dataclass(frozen=True)
class QAExample:
    """One SQuAD-format question. answer_starts are character offsets into context."""

    id: str
    question: str
    context: str
    answers: tuple[str, ...]
    answer_starts: tuple[int, ...]
    paragraph: int  # index of its paragraph in file order (across articles)


def load_squad(path: str | os.PathLike, *, answers_required: bool = True) -> list[QAExample]:
    """A SQuAD v1.1 JSON file → questions, checked: a structural problem raises EvalDataError naming
    the file and where in it (e.g. `data[3].paragraphs[1].qas[0]`), not a bare KeyError. The one
    SQuAD/XQuAD reader: extractive QA needs answer spans (each answer_start pointing at its text);
    answers_required=False (question → paragraph retrieval) reads questions whose answers are
    missing or unchecked (answer_starts then hold what the file gives, -1 where it gives none)."""
    path = Path(path)
    if not path.is_file():
        raise EvalDataMissing(f"eval data file {path} not found; check --data-dir / ${ENV_VAR}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise EvalDataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    except UnicodeDecodeError as e:
        raise EvalDataError(f"{path}: not UTF-8 ({e.reason} at byte {e.start})") from None

    def bad(where: str, problem: str) -> EvalDataError:
        return EvalDataError(f"{path}: {where}: {problem}; expected SQuAD v1.1 JSON "
                               '({"data": [{"paragraphs": [{"context", "qas": [{"id", "question", '
                               '"answers": [{"text", "answer_start"}]}]}]}]})')

    def field_of(obj, key: str, kind: type, where: str):
        if not isinstance(obj, dict) or key not in obj:
            raise bad(where, f"missing {key!r}")
        if not isinstance(obj[key], kind) or isinstance(obj[key], bool):
            raise bad(f"{where}.{key}", f"is {type(obj[key]).__name__}, not {kind.__name__}")
        return obj[key]

    out: list[QAExample] = []
    k = 0
    for a, article in enumerate(field_of(doc, "data", list, "top level")):
        for p, para in enumerate(field_of(article, "paragraphs", list, f"data[{a}]")):
            where = f"data[{a}].paragraphs[{p}]"
            context = field_of(para, "context", str, where)
            for q, qa in enumerate(field_of(para, "qas", list, where)):
                w = f"{where}.qas[{q}]"
                answers = field_of(qa, "answers", list, w) if answers_required or "answers" in qa else []
                if not answers and answers_required:
                    raise bad(f"{w}.answers", "empty (SQuAD v1.1 questions have at least one answer)")
                texts, starts = [], []
                for i, ans in enumerate(answers):
                    text = field_of(ans, "text", str, f"{w}.answers[{i}]")
                    if not answers_required:
                        texts.append(text)
                        starts.append(ans.get("answer_start", -1))
                        continue
                    start = field_of(ans, "answer_start", int, f"{w}.answers[{i}]")
                    if context[start:start + len(text)] != text:
                        raise bad(f"{w}.answers[{i}]", f"answer_start {start} does not point at {text!r} "
                                                       f"in the context")
                    texts.append(text)
                    starts.append(start)
                out.append(QAExample(id=str(field_of(qa, "id", str, w)), question=field_of(qa, "question", str, w),
                                     context=context, answers=tuple(texts), answer_starts=tuple(starts),
                                     paragraph=k))
            k += 1
    if not out:
        raise EvalDataError(f"{path}: no questions (empty split); fill the file or point the task at the right one")
    if answers_required and not any(t for e in out for t in e.answers):
        raise EvalDataError(f"{path}: every answer text is empty; extractive QA needs answer spans "
                              f"(SQuAD v1.1 `answers: [{{text, answer_start}}]` with non-empty text)")
    return out


# ----------------------------------------------------------------------------- generic readers (task files)
# Each returns raw records with their 1-based line numbers; labels stay strings here and are mapped to
# ids by the runner, which knows the task's label set and names the line of a label outside it.


@dataclass(frozen=True)
class Record:
    """One item of a data file: values by role (text, text_pair, label, id, context, question, choices,
    tokens, tags) and the 1-based line it starts on (tag_lines: the line of each word's tag)."""

    line: int
    values: dict
    tag_lines: tuple[int, ...] = ()


def _open_checked(path: Path):
    if not path.is_file():
        raise EvalDataMissing(f"eval data file {path} not found; fix the path in the task file "
                              f"(relative paths start at --data-dir, else the task file's folder)")
    return open(path, encoding="utf-8", newline="")


def _pick(fields: Sequence[str], header: list[str] | None, column: str | int, path: Path, lineno: int) -> str:
    if isinstance(column, str):
        if header is None:
            raise EvalDataError(f"{path}: column {column!r} is named but the file has no header; set "
                                f"`header: true` or give the column as a 0-based index")
        if column not in header:
            raise EvalDataError(f"{path}:1: no column {column!r} in the header {header}; fix `columns:` in the "
                                f"task file")
        column = header.index(column)
    if not -len(fields) <= column < len(fields):
        raise EvalDataError(f"{path}:{lineno}: column {column} asked for, the line has {len(fields)} columns; "
                            f"fix `columns:` in the task file or the line")
    return fields[column]


def read_table(path: str | os.PathLike, columns: dict[str, Any], *, fmt: str = "tsv", header: bool = False,
               strip: bool = False, optional: Sequence[str] = ()) -> list[Record]:
    """A TSV (plain split on tabs, no quoting: such files hold literal quotes) or CSV (RFC 4180 quoting)
    file → records. columns: role → column name (needs header) or 0-based index; the role `choices`
    takes a list of columns. Every line must have the header's (else the first line's) column count.
    strip: strip whitespace around text values (labels and ids are always stripped); optional: roles
    whose named column may be absent from the header (read as "")."""
    path = Path(path)
    out: list[Record] = []
    head: list[str] | None = None
    width = None
    with _open_checked(path) as f:
        if fmt == "csv":
            reader = csv.reader(f)
            rows = ((reader.line_num, row) for row in reader)
        else:
            rows = ((n, line.rstrip("\r\n").split("\t")) for n, line in enumerate(f, start=1) if line.strip())
        try:
            for n, fields in rows:
                if not fields or (len(fields) == 1 and not fields[0].strip()):
                    continue
                if header and head is None:
                    head = [c.strip() for c in fields]
                    width = len(head)
                    continue
                width = width if width is not None else len(fields)
                if len(fields) != width:
                    sep = "comma" if fmt == "csv" else "tab"
                    raise EvalDataError(f"{path}:{n}: expected {width} {sep}-separated columns, got {len(fields)}: "
                                        f"{str(fields)[:80]}")
                values = {}
                for role, col in columns.items():
                    if role in optional and isinstance(col, str) and col not in (head or []):
                        values[role] = ""
                        continue
                    cols = col if isinstance(col, list) else [col]
                    vals = [_pick(fields, head, c, path, n) for c in cols]
                    vals = [v.strip() if (strip or role in ("label", "id")) else v for v in vals]
                    values[role] = vals if isinstance(col, list) else vals[0]
                out.append(Record(n, values))
        except csv.Error as e:
            raise EvalDataError(f"{path}:{reader.line_num}: unreadable CSV line ({e})") from None
    if header and head is None:
        raise EvalDataError(f"{path}: empty file (no header line); fill it or fix the path")
    return out


def read_jsonl(path: str | os.PathLike, columns: dict[str, Any], *, strip: bool = False,
               optional: Sequence[str] = ()) -> list[Record]:
    """JSON Lines → records: role → field name (the role `choices` takes a list of fields, or one field
    holding a list; `tokens` / `tags` fields hold lists). Values are read as text (numbers too).
    optional: roles whose field may be absent (read as "")."""
    path = Path(path)
    out: list[Record] = []
    with _open_checked(path) as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise EvalDataError(f"{path}:{n}: invalid JSON ({e.msg}); one JSON object per line") from None
            if not isinstance(obj, dict):
                raise EvalDataError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
            values = {}
            for role, key in columns.items():
                if role in optional and isinstance(key, str) and key not in obj:
                    values[role] = ""
                    continue
                listed = role in ("choices", "tokens", "tags")
                keys = key if isinstance(key, list) else [key]
                vals: list[str] = []
                for k in keys:
                    if k not in obj:
                        raise EvalDataError(f"{path}:{n}: no field {k!r} (fields: {', '.join(obj)}); fix `columns:` "
                                            f"in the task file or the line")
                    v = obj[k]
                    if isinstance(v, list) and listed and not isinstance(key, list):
                        vals = [str(x) for x in v]
                        break
                    if isinstance(v, (dict, list)):
                        raise EvalDataError(f"{path}:{n}: field {k!r} holds a {type(v).__name__}, expected text "
                                            f"or a number")
                    vals.append(str(v))
                vals = [v.strip() if (strip or role in ("label", "id", "tags")) else v for v in vals]
                values[role] = vals if (isinstance(key, list) or listed) else vals[0]
            if "tokens" in values and len(values["tokens"]) != len(values.get("tags", values["tokens"])):
                raise EvalDataError(f"{path}:{n}: {len(values['tokens'])} tokens but {len(values['tags'])} tags")
            out.append(Record(n, values, tag_lines=(n,) * len(values.get("tags", ()))))
    return out


def read_conll(path: str | os.PathLike, *, separator: str | None = None, token_column: int = 0,
               tag_column: int = -1) -> list[Record]:
    """CoNLL-style `token TAG` lines (columns split on `separator`, default any whitespace), a blank line
    between sentences, `-DOCSTART-` lines (document breaks) ending a sentence and otherwise skipped."""
    path = Path(path)
    out: list[Record] = []
    words: list[str] = []
    tags: list[str] = []
    lines: list[int] = []

    def flush():
        if words:
            out.append(Record(lines[0], {"tokens": list(words), "tags": list(tags)}, tag_lines=tuple(lines)))
            words.clear(), tags.clear(), lines.clear()

    with _open_checked(path) as f:
        for n, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                flush()
                continue
            if line.lstrip().startswith("-DOCSTART-"):
                flush()
                continue
            fields = line.split(separator) if separator else line.split()
            if len(fields) < 2:
                shown = "whitespace" if separator is None else repr(separator)
                raise EvalDataError(f"{path}:{n}: expected a token and a tag separated by {shown}, got "
                                    f"{line[:80]!r}; set `separator:` in the task file or fix the line")
            words.append(_pick(fields, None, token_column, path, n))
            tags.append(_pick(fields, None, tag_column, path, n).strip())
            lines.append(n)
    flush()
    return out


def read_conllu(path: str | os.PathLike, *, tag_column: str = "upos") -> list[Record]:
    """CoNLL-U → sentences of (FORM, UPOS or XPOS); comments, `1-2` ranges and `1.1` empty nodes skipped."""
    path = Path(path)
    col = {"upos": 3, "xpos": 4}[tag_column]
    out: list[Record] = []
    words: list[str] = []
    tags: list[str] = []
    lines: list[int] = []
    with _open_checked(path) as f:
        for n, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                if words:
                    out.append(Record(lines[0], {"tokens": words, "tags": tags}, tag_lines=tuple(lines)))
                    words, tags, lines = [], [], []
                continue
            if _conllu_line(line, path, n) is None:
                continue
            fields = line.split("\t")
            words.append(fields[1])
            tags.append(fields[col].strip())
            lines.append(n)
    if words:
        out.append(Record(lines[0], {"tokens": words, "tags": tags}, tag_lines=tuple(lines)))
    return out


def read_lines(path: str | os.PathLike) -> list[str]:
    """A plain text file, one item per line, every line kept (line-aligned bitext files)."""
    return _lines(Path(path))
