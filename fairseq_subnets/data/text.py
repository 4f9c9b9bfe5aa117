"""Transcript normalization shared by the synthetic corpus and the converters.

One function decides what a transcript looks like, so that a model fine-tuned on synthetic data and
one fine-tuned on FLEURS see the same kind of labels: NFC, lower case, punctuation replaced by
spaces, apostrophes and the Catalan middle dot kept inside words, single spaces.
"""
import re
import unicodedata

APOSTROPHE = "'"
MIDDLE_DOT = "\u00b7"  # Catalan "l·l"
KEPT_INSIDE_WORDS = APOSTROPHE + MIDDLE_DOT

# Typographic apostrophes become ASCII ones, so "l’usuari" and "l'usuari" are one spelling.
_APOSTROPHE_VARIANTS = str.maketrans({"\u2019": APOSTROPHE, "\u02bc": APOSTROPHE, "\u2032": APOSTROPHE})
# An apostrophe or middle dot that does not sit between two letters is a quote mark or a bullet.
_NOT_BETWEEN_LETTERS = re.compile(rf"(?<!\w)[{KEPT_INSIDE_WORDS}]+|[{KEPT_INSIDE_WORDS}]+(?!\w)")


def _is_punctuation_or_symbol(char):
    return unicodedata.category(char)[0] in "PS" and char not in KEPT_INSIDE_WORDS


def normalize_transcript(text, lowercase=True, strip_punctuation=True):
    """Returns `text` in the corpus's canonical form (see the module docstring)."""
    text = unicodedata.normalize("NFC", text).translate(_APOSTROPHE_VARIANTS)
    if lowercase:
        text = text.lower()
    if strip_punctuation:
        text = "".join(" " if _is_punctuation_or_symbol(char) else char for char in text)
        text = _NOT_BETWEEN_LETTERS.sub(" ", text)
    return " ".join(text.split())


def letters(words):
    """The fairseq `.ltr` line for a `.wrd` line: characters separated by spaces, `|` between words."""
    return " ".join(list(words.replace(" ", "|"))) + " |"
