"""Sentences from the gettext catalogues inside the installed Django package.

Why Django: its `.po` files are real, human-translated sentences in many languages (Catalan and
Asturian included), BSD-3-Clause licensed, and already installed with our pinned requirements, so
the corpus needs no network and no text is copied into this repository. The sentences are short
user-interface strings; many are language names. English is the `msgid` of the `en` catalogues,
every other language is the `msgstr` of its own catalogues.

Django is located with `importlib.util.find_spec` and never imported (importing it is slow and
needs settings).
"""
import ast
import hashlib
import importlib.metadata
import importlib.util
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from .errors import DataError
from .text import KEPT_INSIDE_WORDS, normalize_transcript

SOURCE_NAME = "Django translation catalogues (gettext .po files)"
SOURCE_URL = "https://www.djangoproject.com/"
SOURCE_LANGUAGE = "en"  # Django's msgids are English; the `en` catalogues leave msgstr empty
MIN_WORDS = 2
MAX_WORDS = 14

# Format placeholders, markup, paths, e-mail addresses, digits and line breaks: such strings are not
# sentences anyone would read aloud as written.
_UNSPEAKABLE = re.compile(r"[%{}<>\[\]_/\\@#&=*+|~^$`\d\n\t]")


@dataclass
class CatalogueEntry:
    msgid: str
    msgstr: str
    fuzzy: bool
    plural: bool


def django_package_dir():
    spec = importlib.util.find_spec("django")
    if spec is None or spec.origin is None:
        raise DataError("the Django package is not installed; it provides the corpus text (pip install Django)")
    return Path(spec.origin).parent


def source_info():
    """Name, version and licence of the text source, for corpus.json and the README."""
    metadata = importlib.metadata.metadata("Django")
    licence = metadata.get("License-Expression") or metadata.get("License") or "BSD-3-Clause"
    return {"name": SOURCE_NAME, "package": "Django", "version": metadata["Version"], "licence": licence,
            "url": SOURCE_URL}


def catalogue_files(catalogue):
    """Every `.po` file of one locale directory name (e.g. `es`, `ast`), core and contrib apps."""
    root = django_package_dir()
    files = sorted(root.glob(f"**/locale/{catalogue}/LC_MESSAGES/*.po"))
    if not files:
        raise DataError(f"Django {source_info()['version']} has no catalogue for locale '{catalogue}' under {root}")
    return files


def _unquote(po_string, path, line_number):
    try:
        return ast.literal_eval(po_string)
    except (SyntaxError, ValueError) as error:
        raise DataError(f"{path}:{line_number}: cannot parse the string {po_string!r} ({error})") from None


def parse_po(path):
    """The non-obsolete entries of a `.po` file (the header is an entry with an empty msgid).

    An entry ends at its msgstr; the next comment or msgctxt/msgid line starts a new one.
    """
    entries = []
    fields, flags, keyword = {}, set(), None

    def start_new_entry_if_complete():
        nonlocal fields, flags
        if any(name.startswith("msgstr") for name in fields):
            entries.append(CatalogueEntry(
                msgid=fields.get("msgid", ""), msgstr=fields.get("msgstr", fields.get("msgstr[0]", "")),
                fuzzy="fuzzy" in flags, plural="msgid_plural" in fields))
            fields, flags = {}, set()

    for line_number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#~"):
            continue
        if line.startswith("#"):
            start_new_entry_if_complete()
            if line.startswith("#,"):
                flags.update(flag.strip() for flag in line[2:].split(","))
        elif line.startswith('"'):
            if keyword is None:
                raise DataError(f"{path}:{line_number}: string continuation without a keyword")
            fields[keyword] += _unquote(line, path, line_number)
        else:
            keyword, _, value = line.partition(" ")
            if keyword in ("msgctxt", "msgid"):
                start_new_entry_if_complete()
            fields[keyword] = _unquote(value.strip(), path, line_number)
    start_new_entry_if_complete()
    return entries


def _is_latin_letter(char):
    return unicodedata.category(char)[0] in "LM" and "LATIN" in unicodedata.name(char, "")


def speakable_sentence(raw_text):
    """The normalized sentence, or None when the string should not be spoken (see `_UNSPEAKABLE`).

    Only Latin-script letters are kept: all our languages use it, and a stray name in another
    script would add output symbols that no other sentence of the language uses.
    """
    if not raw_text or _UNSPEAKABLE.search(raw_text):
        return None
    sentence = normalize_transcript(raw_text)
    if not MIN_WORDS <= len(sentence.split()) <= MAX_WORDS:
        return None
    if not all(_is_latin_letter(char) or char == " " or char in KEPT_INSIDE_WORDS for char in sentence):
        return None
    return sentence


def catalogue_sentences(catalogue):
    """Sorted unique sentences of one Django locale (`en`, `es`, `ast`, ...)."""
    sentences = set()
    for path in catalogue_files(catalogue):
        for entry in parse_po(path):
            if entry.fuzzy or entry.plural or not entry.msgid:
                continue
            sentence = speakable_sentence(entry.msgid if catalogue == SOURCE_LANGUAGE else entry.msgstr)
            if sentence:
                sentences.add(sentence)
    return sorted(sentences)


def sentences_digest(sentences):
    """A short hash of a sentence list; utterance ids are indices into it, so it must not change under them."""
    return hashlib.sha256("\n".join(sentences).encode("utf-8")).hexdigest()[:16]
