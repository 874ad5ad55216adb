"""Markup stripping, line filters, English-fallback removal and dedup."""

from mmbert.corpus.clean import (LineCleaner, fortunes_to_lines, html_to_lines, is_english, roff_to_lines,
                                 text_to_paragraphs)


def test_html_blocks_entities_and_skipped_elements():
    page = """<html><head><title>T</title><style>p {color: red}</style></head><body>
    <h1>Die   <b>Überschrift</b></h1><script>var x = "<p>no</p>";</script>
    <p>Erster Absatz mit <a href="#">einem
    Link</a> &amp; Entit&auml;t.</p><ul><li>eins</li><li>zwei</li></ul>
    </body></html>"""
    assert html_to_lines(page) == ["Die Überschrift", "Erster Absatz mit einem Link & Entität.", "eins", "zwei"]


def test_mallard_page_drops_info():
    page = """<page xmlns="http://projectmallard.org/1.0/" id="x"><info><credit><name>A. Person</name>
    </credit><license><p>CC-BY-SA</p></license></info><title>Titel der Seite</title>
    <p>Text mit <gui>Knopf</gui> darin.</p></page>"""
    assert html_to_lines(page) == ["Titel der Seite", "Text mit Knopf darin."]


def test_udhr_style_block_subset():
    page = "<article><h2>Artikel 1</h2><p>Alle Menschen</p><div>not a udhr block</div></article>"
    assert html_to_lines(page, blocks=["p", "h1", "h2", "h3", "li"]) == ["Artikel 1", "Alle Menschen",
                                                                         "not a udhr block"]


def test_roff_requests_escapes_and_paragraphs():
    src = r""".\" Kommentar
.TH LS 1 "2023" "GNU" "Benutzerbefehle"
.SH BEZEICHNUNG
ls \- Verzeichnisinhalte auflisten
.SH BESCHREIBUNG
Listet Informationen über die \fIDATEIen\fP auf
(standardmäßig das aktuelle Verzeichnis).
.PP
.BR \-a ", " \-\-all
zeigt auch Einträge an, die mit \(Fo.\(Fc beginnen\" trailing comment
.TS
tab(;);
l l.
a;b
.TE
Ende\~des\~Textes.
"""
    assert roff_to_lines(src) == [
        "BEZEICHNUNG", "ls - Verzeichnisinhalte auflisten", "BESCHREIBUNG",
        "Listet Informationen über die DATEIen auf (standardmäßig das aktuelle Verzeichnis).",
        "-a , --all zeigt auch Einträge an, die mit «.» beginnen", "Ende des Textes."]


def test_fortunes_and_paragraphs():
    assert fortunes_to_lines("Erster Spruch\nüber zwei Zeilen\n%\nZweiter\n%\n") == [
        "Erster Spruch über zwei Zeilen", "Zweiter"]
    assert text_to_paragraphs("a\nb\n\n\n c \n") == ["a b", "c"]


def test_english_detector():
    assert is_english("This option specifies the default value that is used when no file is given.")
    assert is_english("If you want to use this feature, you should have a look at the following page.")
    for other in ["Diese Option gibt den Standardwert an, der verwendet wird, wenn keine Datei angegeben ist.",
                  "Cette option indique la valeur par défaut utilisée quand aucun fichier n'est donné.",
                  "Deze optie geeft de standaardwaarde aan die wordt gebruikt als er geen bestand is.",
                  "Denne indstilling angiver standardværdien for filen, og den bruges hvis intet er angivet.",
                  "Alle Menschen sind frei und gleich an Würde und Rechten geboren."]:
        assert not is_english(other), other


def test_line_cleaner_filters_and_dedups():
    c = LineCleaner("deu_Latn")
    lines = ["kurz", "Dies ist eine ausreichend lange deutsche Zeile.",
             "This is the English original that was not translated yet.",
             "Dies   ist eine ausreichend lange deutsche Zeile.",  # duplicate after normalisation
             "Это строка на русском языке, не на немецком.",
             "Eine zweite deutsche Zeile, ebenfalls lang genug."]
    assert c.clean(lines) == ["Dies ist eine ausreichend lange deutsche Zeile.",
                              "Eine zweite deutsche Zeile, ebenfalls lang genug."]
    assert c.dropped == {"short": 1, "english": 1, "duplicate": 1, "script": 1}
    assert c.kept == 2


def test_non_latin_language_drops_latin_dominated_lines():
    c = LineCleaner("rus_Cyrl")
    kept = c.clean(["Эта страница руководства описывает программу ls.",
                    "This manual page describes the program ls and its options.",
                    "--color[=WHEN] colorize the output; WHEN can be always"])
    assert kept == ["Эта страница руководства описывает программу ls."]
    assert c.dropped["script"] == 2


def test_english_corpus_keeps_english():
    c = LineCleaner("eng_Latn")
    assert c.clean(["This is the English original that was not translated yet."]) != []
