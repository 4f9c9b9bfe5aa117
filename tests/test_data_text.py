"""Transcript normalization and sentence extraction from the installed Django catalogues."""
import re

import pytest

from fairseq_subnets.data.catalogues import (
    catalogue_sentences, parse_po, source_info, speakable_sentence,
)
from fairseq_subnets.data.errors import DataError
from fairseq_subnets.data.text import letters, normalize_transcript

LANGUAGES = ("en", "es", "de", "fr", "pl", "ca", "ast")


@pytest.mark.parametrize("raw, expected", [
    ("¿Quién es?  ¡Hola, Mundo!", "quién es hola mundo"),
    ("L’usuari «Pere» s'ha connectat.", "l'usuari pere s'ha connectat"),
    ("Col·lecció · final", "col·lecció final"),
    ("'quoted' words'", "quoted words"),
    ("e-mail (optional)", "e mail optional"),
    ("Cafe\u0301", "café"),  # decomposed accent becomes one character (NFC)
])
def test_normalize_transcript(raw, expected):
    assert normalize_transcript(raw) == expected


def test_normalize_transcript_options_keep_case_and_punctuation():
    assert normalize_transcript("Hola,  Mundo!", lowercase=False, strip_punctuation=False) == "Hola, Mundo!"


def test_letters_follows_the_fairseq_libri_labels_formula():
    words = "por favor vaya"
    assert letters(words) == " ".join(list(words.replace(" ", "|"))) + " |"
    assert letters(words) == "p o r | f a v o r | v a y a |"


def test_parse_po_handles_fuzzy_plural_obsolete_context_and_continuations(tmp_path):
    po = tmp_path / "django.po"
    po.write_text('''# header comment
msgid ""
msgstr ""
"Content-Type: text/plain; charset=UTF-8\\n"

#: a.py:1
msgid "Save and continue"
msgstr "Guardar y "
"continuar"

#, fuzzy
msgid "Old text"
msgstr "Texto viejo"

msgid "one item"
msgid_plural "%(n)s items"
msgstr[0] "un elemento"
msgstr[1] "%(n)s elementos"

msgctxt "month"
msgid "May"
msgstr "Mayo"

#~ msgid "Removed"
#~ msgstr "Quitado"
msgid "Say \\"hi\\""
msgstr "Di \\"hola\\""
''', encoding="utf-8")
    entries = {entry.msgid: entry for entry in parse_po(po)}
    assert set(entries) == {"", "Save and continue", "Old text", "one item", "May", 'Say "hi"'}
    assert entries["Save and continue"].msgstr == "Guardar y continuar"
    assert entries["Old text"].fuzzy and not entries["Save and continue"].fuzzy
    assert entries["one item"].plural and entries["one item"].msgstr == "un elemento"
    assert entries["May"].msgstr == "Mayo" and not entries["May"].fuzzy
    assert entries['Say "hi"'].msgstr == 'Di "hola"'


def test_parse_po_error_names_file_and_line(tmp_path):
    po = tmp_path / "broken.po"
    po.write_text('msgid "ok"\nmsgstr "bien"\n"dangling\n', encoding="utf-8")
    with pytest.raises(DataError, match=rf"{re.escape(str(po))}:3: cannot parse"):
        parse_po(po)


@pytest.mark.parametrize("raw", [
    "Enter %(count)s items", "Hello {name}", "<b>bold</b> text", "Version 2 released", "one", "a/b path",
    "Ελληνικά γλώσσα",  # not Latin script
    " ".join(["word"] * 15),
])
def test_unspeakable_strings_are_rejected(raw):
    assert speakable_sentence(raw) is None


@pytest.fixture(scope="module")
def sentences_by_language():
    return {language: catalogue_sentences(language) for language in LANGUAGES}


def test_every_language_has_enough_clean_sentences(sentences_by_language):
    for language, sentences in sentences_by_language.items():
        assert len(sentences) > 80, language
        assert sentences == sorted(set(sentences)), language
        for sentence in sentences:
            assert sentence == normalize_transcript(sentence)
            assert not re.search(r"[\d%{}<>_/]", sentence), sentence
            assert 2 <= len(sentence.split()) <= 14, sentence


def test_english_comes_from_msgids_and_other_languages_from_translations(sentences_by_language):
    english, spanish = set(sentences_by_language["en"]), set(sentences_by_language["es"])
    assert "change password" in english
    assert "cambiar contraseña" in spanish
    assert len(english & spanish) < len(spanish) / 5


def test_catalan_middle_dot_and_apostrophes_survive(sentences_by_language):
    catalan = " ".join(sentences_by_language["ca"])
    assert "·" in catalan and "'" in catalan


def test_unknown_catalogue_is_a_clear_error():
    with pytest.raises(DataError, match="no catalogue for locale 'xx'"):
        catalogue_sentences("xx")


def test_source_info_names_the_licence():
    info = source_info()
    assert info["package"] == "Django" and info["licence"] == "BSD-3-Clause" and info["version"]
