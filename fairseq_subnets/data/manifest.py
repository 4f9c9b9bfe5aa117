"""Writers for fairseq's audio manifests, shared by `data synth` and `data manifest`.

A manifest set is a folder with, per split, `{split}.tsv` (first line: absolute audio root; then
`relative/path<TAB>num_samples`), `{split}.wrd` (one transcript per line), `{split}.ltr` (the
same as letters, see `text.letters`) and one `dict.ltr.txt` (`symbol count` lines).

Dictionary rule: the symbols are every character of every split written (so evaluation never
meets a symbol the model has no output for), the counts are their occurrences in the training
split (so they describe what the model learns from; all splits when there is no `train`), sorted
by count then symbol. A symbol seen only in valid/test therefore appears with count 0.
"""
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .files import write_text_atomic
from .text import letters

DICTIONARY_NAME = "dict.ltr.txt"
TRAIN_SPLIT = "train"


@dataclass(frozen=True)
class ManifestEntry:
    audio_path: Path  # absolute (symbolic links are kept, not resolved)
    num_samples: int
    words: object = None  # the transcript (str), or None in an unlabelled set such as pretraining


def common_audio_root(entries):
    """The deepest folder that contains every audio file: the tsv's first line."""
    return Path(os.path.commonpath([str(entry.audio_path.parent) for entry in entries]))


def write_split(out_dir, split, entries, labelled=True, audio_root=None):
    """Writes `{split}.tsv`, and `{split}.wrd`/`.ltr` if `labelled`. The root defaults to the common folder."""
    out_dir = Path(out_dir)
    audio_root = Path(os.path.abspath(audio_root or common_audio_root(entries)))
    tsv_lines = [str(audio_root)]
    tsv_lines += [f"{entry.audio_path.relative_to(audio_root).as_posix()}\t{entry.num_samples}" for entry in entries]
    write_text_atomic(out_dir / f"{split}.tsv", "\n".join(tsv_lines) + "\n")
    if labelled:
        write_text_atomic(out_dir / f"{split}.wrd", "".join(f"{entry.words}\n" for entry in entries))
        write_text_atomic(out_dir / f"{split}.ltr", "".join(f"{letters(entry.words)}\n" for entry in entries))
    return out_dir / f"{split}.tsv"


def letter_dictionary(transcripts_by_split):
    """[(symbol, count)] following the dictionary rule in the module docstring."""
    every_transcript = [words for transcripts in transcripts_by_split.values() for words in transcripts]
    counted = transcripts_by_split.get(TRAIN_SPLIT) or every_transcript
    training = Counter(symbol for words in counted for symbol in letters(words).split())
    every_symbol = {symbol for words in every_transcript for symbol in letters(words).split()}
    return sorted(((symbol, training[symbol]) for symbol in every_symbol), key=lambda item: (-item[1], item[0]))


def write_letter_dictionary(out_dir, transcripts_by_split):
    lines = "".join(f"{symbol} {count}\n" for symbol, count in letter_dictionary(transcripts_by_split))
    write_text_atomic(Path(out_dir) / DICTIONARY_NAME, lines)
    return Path(out_dir) / DICTIONARY_NAME


def read_dictionary_symbols(path):
    """The symbols of a `dict.ltr.txt`, for use as an alphabet."""
    return [line.split()[0] for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
