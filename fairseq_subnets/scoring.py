"""Character and word error rates, computed the way fairseq's `--wer-char-level` scorer counts.

CER: edit distance over characters (every space included, as emitted: a doubled word boundary in a
hypothesis is an error) divided by the reference character count.
WER: edit distance over whitespace-separated words divided by the reference word count.
"""
from dataclasses import dataclass

import editdistance


@dataclass(frozen=True)
class ErrorRates:
    cer: float
    wer: float
    utterances: int
    char_errors: int
    chars: int
    word_errors: int
    words: int


def error_rates(pairs):
    """`pairs`: iterable of (reference, hypothesis) strings. Rates are percentages."""
    char_errors = chars = word_errors = words = utterances = 0
    for reference, hypothesis in pairs:
        char_errors += editdistance.eval(list(reference), list(hypothesis))
        chars += len(reference)
        word_errors += editdistance.eval(reference.split(), hypothesis.split())
        words += len(reference.split())
        utterances += 1
    return ErrorRates(
        cer=100.0 * char_errors / max(chars, 1),
        wer=100.0 * word_errors / max(words, 1),
        utterances=utterances,
        char_errors=char_errors,
        chars=chars,
        word_errors=word_errors,
        words=words,
    )
