"""Declarative evaluation tasks: a YAML (or JSON) task file → `Task` records that the runner executes.

    mmbert eval --model out/ckpt --task-file my_tasks.yaml --out out/eval/mine
    from mmbert.eval.taskfile import builtin_task, load_task_file
    tasks = load_task_file("my_tasks.yaml")      # list[Task | InvalidTask], in file order
    builtin_task("sib200")                       # the shipped task file src/mmbert/eval/tasks/sib200.yaml

A task file is a list of tasks (or a mapping with `tasks:` and an optional `data_dir:`). Each task names
its `type`, its data `format`, its `train` / `eval` files (paths or globs; `{lang}` stands for a
language and is discovered from the files present), its label set, protocol and metric; the schema and
two worked examples are in docs/eval.md. `use: NAME` takes a built-in task and overrides fields of it
(`protocol` is merged key by key): the built-in suites `quick` and `full` (tasks/quick.yaml,
tasks/full.yaml) are such lists.

Relative paths start at the task file's `data_dir:` (relative to the file), else `--data-dir` when given,
else the task file's folder; the built-in tasks' paths start at the eval data directory.

A mistake in one task (unknown type / format / metric / key, a missing field) makes that task an
`InvalidTask` whose message names the task, the file and line, and the fix: the runner reports it and
runs the others. A file that cannot be parsed at all raises TaskFileError.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BUILTIN_DIR = Path(__file__).resolve().parent / "tasks"

# type → (formats it reads, metrics it reports, default metric)
TYPES: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    "sequence-classification": (("tsv", "csv", "jsonl"), ("accuracy", "macro-f1"), "accuracy"),
    "pair-classification": (("tsv", "csv", "jsonl"), ("accuracy", "macro-f1"), "accuracy"),
    "token-classification": (("conll", "conllu", "jsonl"), ("span-f1", "accuracy"), "span-f1"),
    "multiple-choice": (("jsonl", "tsv", "csv"), ("accuracy",), "accuracy"),
    "extractive-qa": (("squad",), ("squad",), "squad"),
    "bitext-retrieval": (("text", "tsv", "csv", "jsonl", "squad"), ("accuracy@1",), "accuracy@1"),
    "mlm": ((), ("accuracy",), "accuracy"),  # held-out token shards (--shards), no data files
}
# columns each (type, format) reads: role → default column (None = required, no default)
COLUMNS: dict[tuple[str, str], dict[str, Any]] = {
    **{("sequence-classification", f): {"text": None, "label": None} for f in ("tsv", "csv", "jsonl")},
    **{("pair-classification", f): {"text": None, "text_pair": None, "label": None} for f in ("tsv", "csv", "jsonl")},
    ("token-classification", "conll"): {"token": 0, "tag": -1},
    ("token-classification", "conllu"): {"tag": "upos"},
    ("token-classification", "jsonl"): {"tokens": "tokens", "tags": "tags"},
    # COPA out of the box: {"premise", "choice1", "choice2", "question": "cause"|"effect", "label": 0|1}
    **{("multiple-choice", f): {"context": "premise", "choices": ["choice1", "choice2"], "question": "question",
                                "label": "label"} for f in ("jsonl", "tsv", "csv")},
    **{("bitext-retrieval", f): {"text": None, "id": ""} for f in ("tsv", "csv", "jsonl")},
}
METRIC_NAMES = {"accuracy": "accuracy", "macro-f1": "macro-F1", "span-f1": "span-F1 (seqeval)",
                "squad": "F1 (SQuAD v1.1; exact match alongside)", "accuracy@1": "accuracy@1"}
TRANSFERS = ("zero-shot", "joint", "in-language")
TASK_KEYS = ("name", "type", "format", "train", "eval", "source", "target", "languages", "labels", "columns",
             "separator", "header", "strip", "metric", "protocol", "description", "requires", "parallel")


class TaskFileError(ValueError):
    """A task file that cannot be read at all (not YAML/JSON, not a list of tasks)."""


@dataclass(frozen=True)
class Protocol:
    """How a task is trained and scored; the defaults are the harness's fixed hyperparameters."""

    epochs: float = 3.0
    lr: float = 1e-4
    batch_size: int = 32
    max_len: int = 128
    seeds: tuple[int, ...] | None = None  # None: the run's seeds (--seed / --num-seeds)
    max_train: int | None = None  # training items kept (per language for joint / in-language)
    max_eval: int | None = None  # evaluation items kept per language (retrieval: pairs; mlm: see max_tokens)
    train_sample: str = "first"  # first | random (a fixed random subset of max_train items)
    sample_seed: int = 1234  # generator seed of train_sample: random
    transfer: str | None = None  # zero-shot | joint | in-language; default from the train path ({lang} or not)
    stride: int | None = None  # extractive-qa: overlap of context windows (default max_len // 2)
    max_languages: int | None = None  # mlm: at most this many languages, spread over the size ranking
    max_tokens: int | None = None  # mlm: tokens per language (default 8192)


@dataclass(frozen=True)
class Split:
    """One file (or glob) of a task; rows / paragraphs: [start, stop) items kept (stop None = to the end)."""

    path: str
    rows: tuple[int, int | None] | None = None
    paragraphs: tuple[int, int | None] | None = None  # squad files: paragraph range (file order)


@dataclass(frozen=True)
class Task:
    name: str
    type: str
    format: str | None = None
    train: Split | None = None
    eval: Split | None = None
    source: Split | None = None  # bitext-retrieval: the per-language side
    target: Split | None = None  # bitext-retrieval: the pivot side
    languages: tuple[str, ...] | None = None  # subset (in this order); None: every language found
    labels: tuple[str, ...] | None = None  # None: collected from the training data, sorted
    columns: dict[str, Any] = field(default_factory=dict)
    separator: str | None = None  # conll: column separator (None: any whitespace)
    header: bool | None = None  # tsv / csv: first line names the columns (default: when a column is a name)
    strip: bool = False  # strip whitespace around text values
    metric: str = "accuracy"
    protocol: Protocol = Protocol()
    description: str | None = None
    requires: str | None = None  # a folder that must exist, else the task is skipped (not failed)
    parallel: bool = False  # extractive-qa: eval files must hold the train file's questions, same order
    optional: tuple[str, ...] = ()  # column roles taken from the defaults that a file may lack (read as "")
    base: Path | None = None  # relative paths start here; None: the eval data directory
    where: str = field(default="?", compare=False)  # file:line that defines the task (error messages)

    @property
    def max_len(self) -> int:
        return self.protocol.max_len

    def error(self, problem: str) -> "TaskError":
        return TaskError(f"task {self.name!r} ({self.where}): {problem}")


class TaskError(ValueError):
    """A task that cannot run as declared; the message names the task, its file:line and the fix."""


@dataclass(frozen=True)
class InvalidTask:
    """A task entry with a schema error: the runner records `error` and runs the other tasks."""

    name: str
    error: str


# ----------------------------------------------------------------------------- parsing
class _Map(dict):
    line: int | None = None


def _yaml_load(text: str):
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    # YAML 1.2 booleans: only true / false. YAML 1.1 also reads yes / no / on / off as booleans, which
    # would turn the label `no` or the language code `no` (Norwegian) into False.
    bool_tag = "tag:yaml.org,2002:bool"
    Loader.yaml_implicit_resolvers = {k: [(t, rx) for t, rx in v if t != bool_tag]
                                      for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    Loader.add_implicit_resolver(bool_tag, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
    # and YAML 1.2 floats: `lr: 2e-5` is a number (YAML 1.1 wants a dot, `2.0e-5`, else reads a string)
    Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
                                                                      r"[eE][-+]?[0-9]+$"), list("-+0123456789."))

    def mapping(loader, node):
        m = _Map(loader.construct_mapping(node, deep=True))
        m.line = node.start_mark.line + 1
        return m

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return yaml.load(text, Loader=Loader)  # noqa: S506 - SafeLoader subclass (no object construction)


def _read_file(path: Path) -> Any:
    if not path.is_file():
        raise TaskFileError(f"task file {path} not found; pass --task-file a YAML or JSON file")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            return json.loads(text, object_pairs_hook=_Map)
        except json.JSONDecodeError as e:
            raise TaskFileError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    import yaml

    try:
        return _yaml_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise TaskFileError(f"{path}{line}: invalid YAML ({getattr(e, 'problem', None) or e})") from None


def _entries(doc: Any, path: Path) -> tuple[list, Any]:
    if isinstance(doc, dict):
        unknown = set(doc) - {"tasks", "data_dir"}
        if unknown or "tasks" not in doc:
            raise TaskFileError(f"{path}: a task file is a list of tasks, or a mapping with `tasks:` (and an "
                                f"optional `data_dir:`); got keys {sorted(doc)}")
        tasks, data_dir = doc["tasks"], doc.get("data_dir")
    else:
        tasks, data_dir = doc, None
    if not isinstance(tasks, list) or not tasks:
        raise TaskFileError(f"{path}: no tasks; write a list of tasks (`- name: …`), see docs/eval.md")
    return tasks, data_dir


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = {**base.get(k, {}), **v} if k == "protocol" and isinstance(v, dict) else v
    return out


def _builtin_raw(name: str) -> dict:
    path = BUILTIN_DIR / f"{name}.yaml"
    if not path.is_file() or name in ("quick", "full"):
        raise KeyError(name)
    doc = _read_file(path)
    tasks, _ = _entries(doc, path)
    return tasks[0]


def builtin_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml") if p.stem not in ("quick", "full"))


def _split(value: Any, key: str, fail) -> Split | None:
    if value is None:
        return None
    if isinstance(value, str):
        return Split(value)
    if not isinstance(value, dict) or "path" not in value or set(value) - {"path", "rows", "paragraphs"}:
        raise fail(f"`{key}` must be a path (or glob) or a mapping {{path, rows: [start, stop]}} "
                   f"({{path, paragraphs: [start, stop]}} for squad files)")

    def rng(v, k):
        if v is None:
            return None
        if (not isinstance(v, list) or len(v) != 2 or not isinstance(v[0], int)
                or not (v[1] is None or isinstance(v[1], int)) or v[0] < 0):
            raise fail(f"`{key}.{k}` must be [start, stop] (0-based, stop excluded; stop null = to the end)")
        return (v[0], v[1])

    return Split(str(value["path"]), rng(value.get("rows"), "rows"), rng(value.get("paragraphs"), "paragraphs"))


def _protocol(proto_raw: Any, fail) -> Protocol:
    """The `protocol:` mapping of a task entry → Protocol (numbers checked and normalised)."""
    if not isinstance(proto_raw, dict):
        raise fail("`protocol` must be a mapping (epochs, lr, max_len, seeds, …)")
    names = {f.name: f for f in dataclasses.fields(Protocol)}
    bad = sorted(set(proto_raw) - set(names))
    if bad:
        raise fail(f"unknown protocol key(s) {', '.join(bad)}; the protocol takes {', '.join(names)}")
    proto = {k: v for k, v in proto_raw.items()}
    if "seeds" in proto and proto["seeds"] is not None:
        seeds = proto["seeds"] if isinstance(proto["seeds"], list) else [proto["seeds"]]
        if not seeds or not all(isinstance(s, int) for s in seeds):
            raise fail("`protocol.seeds` must be a list of integers")
        proto["seeds"] = tuple(seeds)
    for k in ("epochs", "lr"):
        if k in proto and (not isinstance(proto[k], (int, float)) or proto[k] <= 0):
            raise fail(f"`protocol.{k}` must be a positive number")
    for k in ("batch_size", "max_len", "max_train", "max_eval", "sample_seed", "stride", "max_languages",
              "max_tokens"):
        low = 0 if k == "sample_seed" else 1
        if k in proto and proto[k] is not None and (not isinstance(proto[k], int) or proto[k] < low):
            raise fail(f"`protocol.{k}` must be an integer ≥ {low}")
    if proto.get("train_sample", "first") not in ("first", "random"):
        raise fail("`protocol.train_sample` must be first or random")
    if proto.get("transfer") not in (None,) + TRANSFERS:
        raise fail(f"`protocol.transfer` must be one of {', '.join(TRANSFERS)}")
    if "epochs" in proto:
        proto["epochs"] = float(proto["epochs"])
    if "lr" in proto:
        proto["lr"] = float(proto["lr"])
    return Protocol(**proto)


def _splits(raw: dict, kind: str, protocol: Protocol,
            fail) -> tuple[Split | None, Split | None, Split | None, Split | None, Protocol]:
    """train / eval / source / target of a task entry, checked against its type; the protocol's
    transfer is filled in from the train path. Returns (train, eval, source, target, protocol)."""
    train, ev = _split(raw.get("train"), "train", fail), _split(raw.get("eval"), "eval", fail)
    source, target = _split(raw.get("source"), "source", fail), _split(raw.get("target"), "target", fail)
    if kind == "bitext-retrieval":
        if source is None or target is None or train is not None or ev is not None:
            raise fail("a bitext-retrieval task takes `source:` (per language, with {lang}) and `target:` "
                       "(the pivot side), and no train/eval")
    elif kind == "mlm":
        if any(s is not None for s in (train, ev, source, target)):
            raise fail("type mlm reads the held-out token shards (--shards): drop the data paths")
    else:
        if train is None or ev is None:
            raise fail(f"missing `{'train' if train is None else 'eval'}:` (a path or glob; {{lang}} for "
                       f"per-language files)")
        if source is not None or target is not None:
            raise fail("`source:` / `target:` are for bitext-retrieval; use `train:` and `eval:`")
        has_lang = "{lang}" in train.path
        transfer = protocol.transfer or ("in-language" if has_lang else "zero-shot")
        if (transfer == "zero-shot") == has_lang:
            raise fail(f"protocol.transfer {transfer} needs a train path "
                       f"{'without' if transfer == 'zero-shot' else 'with'} {{lang}}")
        protocol = dataclasses.replace(protocol, transfer=transfer)
        if "{lang}" not in ev.path and transfer != "zero-shot":
            raise fail("an eval path without {lang} is one language: use transfer zero-shot")
    if kind != "extractive-qa" and any(s is not None and s.paragraphs is not None for s in (train, ev)):
        raise fail("`paragraphs:` selects squad paragraphs; use `rows:` for other formats")
    if kind == "extractive-qa" and any(s is not None and s.rows is not None for s in (train, ev)):
        raise fail("squad files are selected by `paragraphs: [start, stop]`, not rows")
    return train, ev, source, target, protocol


def _columns(columns: Any, kind: str, fmt: str | None, fail) -> tuple[dict, tuple[str, ...]]:
    """The `columns:` mapping of a task entry, merged over the format's defaults → (columns, optional
    roles left unnamed)."""
    if not isinstance(columns, dict):
        raise fail("`columns` must map roles to column names / indices (e.g. {text: sentence, label: label})")
    defaults = COLUMNS.get((kind, fmt), {})
    optional: tuple[str, ...] = ()
    if defaults or columns:
        if not defaults:
            raise fail(f"format {fmt} of type {kind} takes no `columns:`")
        extra = sorted(set(columns) - set(defaults))
        if extra:
            raise fail(f"unknown column role(s) {', '.join(extra)} for {kind} / {fmt}; roles: {', '.join(defaults)}")
        optional = tuple(r for r in ("question",) if r in defaults and r not in columns)  # COPA's, if present
        columns = {**defaults, **columns}
        missing = [r for r, c in columns.items() if c is None]
        if missing:
            raise fail(f"`columns:` must name the {', '.join(missing)} column(s) (a header name or a 0-based index)")
        columns = {r: c for r, c in columns.items() if c != ""}  # "" = optional role unused
        if fmt == "conllu" and columns["tag"] not in ("upos", "xpos"):
            raise fail("a conllu tag column is upos or xpos")
        if fmt == "conll" and not all(isinstance(c, int) for c in columns.values()):
            raise fail("conll columns are 0-based indices (negative counts from the end)")
        if kind == "multiple-choice" and not isinstance(columns["choices"], (list, str)):
            raise fail("`columns.choices` is a list of columns, or one jsonl field holding a list")
    return columns, optional


def parse_task(raw: Any, *, where: str, base: Path | None) -> Task:
    """One task entry (a mapping) → Task; raises TaskError naming the task, where it is and the fix."""
    name = raw.get("name") if isinstance(raw, dict) else None
    label = name if isinstance(name, str) else "?"

    def fail(problem: str) -> TaskError:
        return TaskError(f"task {label!r} ({where}): {problem}")

    if not isinstance(raw, dict):
        raise fail("a task is a mapping (`name:`, `type:`, …), see docs/eval.md")
    if "use" in raw:
        try:
            raw = _merge(_builtin_raw(str(raw["use"])), {k: v for k, v in raw.items() if k != "use"})
        except KeyError:
            raise fail(f"unknown built-in task {raw['use']!r}; choose from {', '.join(builtin_names())}") from None
        name = raw.get("name")
        label = name if isinstance(name, str) else label
    unknown = sorted(set(raw) - set(TASK_KEYS))
    if unknown:
        raise fail(f"unknown key(s) {', '.join(unknown)}; a task takes {', '.join(TASK_KEYS)}")
    if not isinstance(name, str) or not name:
        raise fail("missing `name:` (the task's name in the results)")
    kind = raw.get("type")
    if kind not in TYPES:
        raise fail(f"unknown type {kind!r}; use one of {', '.join(TYPES)}")
    formats, metrics, default_metric = TYPES[kind]
    fmt = raw.get("format")
    if kind == "mlm":
        if fmt is not None:
            raise fail("type mlm reads the held-out token shards (--shards): drop `format:`")
    elif fmt not in formats:
        raise fail(f"unknown format {fmt!r} for type {kind}; use one of {', '.join(formats)}")
    metric = raw.get("metric", default_metric)
    if metric not in metrics:
        raise fail(f"unknown metric {metric!r} for type {kind}; use one of {', '.join(metrics)}")
    protocol = _protocol(raw.get("protocol") or {}, fail)
    train, ev, source, target, protocol = _splits(raw, kind, protocol, fail)
    columns, optional = _columns(raw.get("columns") or {}, kind, fmt, fail)
    if raw.get("separator") is not None and fmt != "conll":
        raise fail("`separator:` is for conll files (tsv splits on tabs, csv on commas)")
    header = raw.get("header")
    if header is not None and fmt not in ("tsv", "csv"):
        raise fail("`header:` is for tsv / csv files")
    if header is None and fmt in ("tsv", "csv"):
        header = any(isinstance(c, str) or isinstance(c, list) and any(isinstance(x, str) for x in c)
                     for c in columns.values())
    labels = raw.get("labels")
    if labels is not None:
        if not isinstance(labels, list) or not labels or len(set(map(str, labels))) != len(labels):
            raise fail("`labels` must be a list of distinct labels (or left out: collected from train, sorted)")
        labels = tuple(str(x) for x in labels)
    languages = raw.get("languages")
    if languages is not None:
        if not isinstance(languages, list) or not all(isinstance(x, str) for x in languages):
            raise fail("`languages` must be a list of language names (the values {lang} takes)")
        languages = tuple(languages)
    if raw.get("parallel") and kind != "extractive-qa":
        raise fail("`parallel:` is for extractive-qa")
    return Task(name=name, type=kind, format=fmt, train=train, eval=ev, source=source, target=target,
                languages=languages, labels=labels, columns=columns, separator=raw.get("separator"),
                header=header, strip=bool(raw.get("strip", False)), metric=metric, protocol=protocol,
                description=raw.get("description"), requires=raw.get("requires"),
                parallel=bool(raw.get("parallel", False)), optional=optional, base=base, where=where)


def load_task_file(path: str | os.PathLike, *, data_dir: str | os.PathLike | None = None,
                   builtin: bool = False) -> list[Task | InvalidTask]:
    """Parse a task file. Entries with schema errors come back as InvalidTask (the others still run);
    an unreadable file raises TaskFileError. data_dir: the explicit --data-dir (see the module docstring)."""
    path = Path(path)
    doc = _read_file(path)
    entries, file_dir = _entries(doc, path)
    file_base = (path.parent / str(file_dir)).resolve() if file_dir is not None else None
    if builtin:
        base = None
    elif file_base is not None:
        base = file_base
    elif data_dir is not None:
        base = Path(data_dir).expanduser()
    else:
        base = path.parent.resolve()
    out: list[Task | InvalidTask] = []
    seen: set[str] = set()
    for i, raw in enumerate(entries):
        where = f"{path}:{getattr(raw, 'line', None) or '?'}"
        over_builtin = isinstance(raw, dict) and "use" in raw and not any(
            k in raw for k in ("train", "eval", "source", "target"))
        try:
            # a built-in's own paths start at the file's data_dir when it has one, else at the eval data dir
            t = parse_task(raw, where=where, base=file_base if over_builtin else base)
            if t.name in seen:
                raise TaskError(f"task {t.name!r} ({where}): a second task with this name; names must be unique "
                                f"(they key the results)")
            seen.add(t.name)
            out.append(t)
        except TaskError as e:
            name = raw.get("name") or raw.get("use") if isinstance(raw, dict) else None
            out.append(InvalidTask(name=str(name or f"task {i + 1}"), error=str(e)))
    return out


def builtin_task(name: str) -> Task:
    """The shipped task file tasks/<name>.yaml (paths relative to the eval data directory)."""
    try:
        raw = _builtin_raw(name)
    except KeyError:
        raise ValueError(f"unknown eval task {name!r}; choose from {', '.join(builtin_names())}") from None
    return parse_task(raw, where=f"{BUILTIN_DIR / name}.yaml:{getattr(raw, 'line', '?')}", base=None)


def suite(name: str) -> list[Task]:
    """The built-in suite `quick` or `full` (tasks/<name>.yaml: a list of `use:` entries)."""
    if name not in ("quick", "full"):
        raise ValueError(f"unknown eval suite {name!r}; use 'quick' or 'full'")
    tasks = load_task_file(BUILTIN_DIR / f"{name}.yaml", builtin=True)
    bad = [t.error for t in tasks if isinstance(t, InvalidTask)]
    if bad:  # a shipped file: a bug, not a user error
        raise RuntimeError("; ".join(bad))
    return tasks  # type: ignore[return-value]


# ----------------------------------------------------------------------------- files and languages
def resolve(base: Path, pattern: str) -> tuple[Path, str]:
    """(folder to search, relative pattern) of a path that may be absolute."""
    p = Path(pattern).expanduser()
    if p.is_absolute():
        return Path(p.anchor), str(p.relative_to(p.anchor))
    return base, pattern


def _is_glob(s: str) -> bool:
    return any(ch in s for ch in "*?[")


def files(base: Path, pattern: str) -> list[Path]:
    """The files a path or glob (no {lang}) names, sorted; a plain path is returned even if absent
    (its reader then says it is missing)."""
    root, rel = resolve(base, pattern)
    if not _is_glob(rel):
        return [root / rel]
    return sorted(p for p in root.glob(rel) if p.is_file())


def _pattern_regex(rel: str) -> re.Pattern:
    out, seen = [], False
    for part in re.split(r"(\{lang\}|\*|\?)", rel):
        if part == "{lang}":
            out.append("(?P=lang)" if seen else "(?P<lang>[^/]+)")
            seen = True
        elif part == "*":
            out.append("[^/]*")
        elif part == "?":
            out.append("[^/]")
        else:
            out.append(re.escape(part))
    return re.compile("".join(out))


def languages_of(base: Path, pattern: str) -> dict[str, list[Path]]:
    """{lang: files} for a pattern with {lang} (a glob may follow it), languages sorted."""
    root, rel = resolve(base, pattern)
    rx = _pattern_regex(rel)
    found: dict[str, list[Path]] = {}
    for p in sorted(root.glob(rel.replace("{lang}", "*"))):
        m = rx.fullmatch(p.relative_to(root).as_posix())
        if m and p.is_file():
            found.setdefault(m["lang"], []).append(p)
    return dict(sorted(found.items()))
