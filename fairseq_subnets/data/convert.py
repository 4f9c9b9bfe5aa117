"""`data manifest`: fairseq manifest sets from real corpora as they are distributed.

Layouts read (SOURCE is the folder given on the command line):

* fleurs:      SOURCE/{split}.tsv (no header; id, file name, raw transcription, normalized
               transcription, space-separated characters, num samples, gender) and
               SOURCE/audio/{split}/<file name>. The normalized transcription is used.
* commonvoice: SOURCE/{split}.tsv with a header row (the `path` and `sentence` columns are used,
               whatever the release's other columns) and SOURCE/clips/<path>.
* mls:         SOURCE/{split}/transcripts.txt (`speaker_book_utt<TAB>text`) and
               SOURCE/{split}/audio/<speaker>/<book>/<speaker_book_utt>.flac (or .opus).
* folder:      SOURCE is a folder of audio files; each transcript file has `utt_id<TAB>text`
               (the audio is the file under SOURCE named utt_id plus an audio extension) or
               `relative/path<TAB>text` lines.

Audio: 16 kHz mono WAV/FLAC files are used in place; anything else (Common Voice's 48 kHz mp3s,
stereo, other rates) is decoded and resampled once into OUT/audio/<same relative path>.wav,
because fairseq needs 16 kHz and exact sample counts, which mp3 headers do not give.

Transcripts are normalized like the synthetic corpus (`text.normalize_transcript`). With an
alphabet, an utterance with a character outside it is dropped and counted (`on_unknown="drop"`,
the default: real corpora have a few foreign names, and one should not stop a conversion), or
the conversion stops listing every offending file:line (`on_unknown="error"`). Utterances whose
transcript is empty after normalization are dropped and counted.

Split names: `dev` is written as `valid`, the name fairseq uses by default; others are kept.
"""
import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import soundfile

from .audio import convert_to_wav, usable_in_place
from .errors import DataError
from .files import make_output_folder, remove_partial_files, run_in_threads
from .manifest import ManifestEntry, read_dictionary_symbols, write_letter_dictionary, write_split
from .text import normalize_transcript

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus")
OUTPUT_SPLIT_NAMES = {"dev": "valid"}
EXAMPLES_SHOWN = 5


@dataclass(frozen=True)
class SourceUtterance:
    audio_path: Path
    text: str
    origin: str  # "file:line", for messages


@dataclass
class SplitReport:
    split: str  # the output name
    kept: int = 0
    converted: int = 0
    dropped_empty: list = field(default_factory=list)  # origins
    dropped_unknown: list = field(default_factory=list)  # (origin, characters)

    def describe(self):
        lines = [f"{self.split}: {self.kept} utterances ({self.converted} converted to 16 kHz wav)"]
        if self.dropped_unknown:
            shown = self.dropped_unknown[:EXAMPLES_SHOWN]
            examples = "; ".join(f"{origin} {''.join(chars)!r}" for origin, chars in shown)
            lines.append(f"  dropped {len(self.dropped_unknown)} with characters outside the alphabet, e.g. {examples}")
        if self.dropped_empty:
            lines.append(f"  dropped {len(self.dropped_empty)} with an empty transcript, e.g. "
                         f"{'; '.join(self.dropped_empty[:EXAMPLES_SHOWN])}")
        return "\n".join(lines)


def _require_file(path, what):
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    return path


def _tab_fields(path, line_number, line, minimum):
    fields = line.rstrip("\n").split("\t")
    if len(fields) < minimum:
        raise DataError(f"{path}:{line_number}: expected at least {minimum} tab-separated fields, got {len(fields)}")
    return fields


def _data_lines(path):
    """(line number, line) for every non-blank line."""
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if line.strip():
                yield line_number, line


def read_fleurs(source, split):
    tsv = _require_file(source / f"{split}.tsv", "FLEURS transcript file")
    utterances = []
    for line_number, line in _data_lines(tsv):
        fields = _tab_fields(tsv, line_number, line, 7)
        utterances.append(SourceUtterance(source / "audio" / split / fields[1], fields[3], f"{tsv}:{line_number}"))
    return utterances


def read_common_voice(source, split):
    tsv = _require_file(source / f"{split}.tsv", "Common Voice transcript file")
    lines = _data_lines(tsv)
    _, header_line = next(lines, (1, ""))
    header = header_line.rstrip("\n").split("\t")
    missing = [column for column in ("path", "sentence") if column not in header]
    if missing:
        raise DataError(f"{tsv}:1: header has no {' or '.join(missing)} column (columns: {', '.join(header)})")
    path_column, sentence_column = header.index("path"), header.index("sentence")
    utterances = []
    for line_number, line in lines:
        fields = _tab_fields(tsv, line_number, line, len(header))
        utterances.append(SourceUtterance(source / "clips" / fields[path_column], fields[sentence_column],
                                          f"{tsv}:{line_number}"))
    return utterances


def read_mls(source, split):
    transcripts = _require_file(source / split / "transcripts.txt", "MLS transcript file")
    utterances = []
    for line_number, line in _data_lines(transcripts):
        utt_id, text = _tab_fields(transcripts, line_number, line, 2)[:2]
        parts = utt_id.split("_")
        if len(parts) != 3:
            raise DataError(f"{transcripts}:{line_number}: utterance id {utt_id!r} is not speaker_book_utterance")
        stem = source / split / "audio" / parts[0] / parts[1] / utt_id
        audio = next((stem.with_suffix(ext) for ext in (".flac", ".opus") if stem.with_suffix(ext).is_file()),
                     stem.with_suffix(".flac"))
        utterances.append(SourceUtterance(audio, text, f"{transcripts}:{line_number}"))
    return utterances


def _audio_files_by_stem(folder):
    index = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in AUDIO_EXTENSIONS and path.is_file():
            index.setdefault(path.stem, []).append(path)
    return index


def read_folder(source, transcript_file):
    """Lines `utt_id<TAB>text` or `path<TAB>text`; a first field naming a file under SOURCE is a path."""
    transcript_file = _require_file(Path(transcript_file), "transcript file")
    by_stem = None
    utterances = []
    for line_number, line in _data_lines(transcript_file):
        key, text = _tab_fields(transcript_file, line_number, line, 2)[:2]
        origin = f"{transcript_file}:{line_number}"
        candidate = source / key
        if not candidate.is_file():
            by_stem = _audio_files_by_stem(source) if by_stem is None else by_stem
            matches = by_stem.get(key, [])
            if len(matches) != 1:
                found = f"{len(matches)} audio files ({', '.join(map(str, matches))})" if matches else "no audio file"
                raise DataError(f"{origin}: {found} for {key!r} under {source} "
                                f"(expected a path relative to it or a unique utterance id)")
            candidate = matches[0]
        if not Path(os.path.normpath(candidate)).is_relative_to(os.path.normpath(source)):
            raise DataError(f"{origin}: {candidate} is outside the audio folder {source}")
        utterances.append(SourceUtterance(candidate, text, origin))
    return utterances


FORMATS = {"fleurs": read_fleurs, "commonvoice": read_common_voice, "mls": read_mls}
DEFAULT_SPLITS = ("train", "dev", "test")


def _normalized_entries(utterances, report, lowercase, strip_punctuation, alphabet, on_unknown):
    """(utterance, normalized text) pairs that pass the transcript rules; the rest are counted in `report`."""
    kept, unknown = [], []
    for utterance in utterances:
        words = normalize_transcript(utterance.text, lowercase=lowercase, strip_punctuation=strip_punctuation)
        if not words:
            report.dropped_empty.append(utterance.origin)
            continue
        outside = sorted({char for char in words if char != " " and char not in alphabet}) if alphabet else []
        if outside:
            unknown.append((utterance.origin, outside))
            continue
        kept.append((utterance, words))
    if unknown and on_unknown == "error":
        listing = "\n".join(f"{origin}: characters {''.join(chars)!r} not in the alphabet" for origin, chars in unknown)
        raise DataError(f"{len(unknown)} transcripts have characters outside the alphabet:\n{listing}")
    report.dropped_unknown = unknown
    return kept


def _prepare_audio(source, out_dir, utterance):
    """(path fairseq will read, num_samples, converted?) for one source file."""
    try:
        info = soundfile.info(str(utterance.audio_path))
    except RuntimeError as error:  # soundfile's LibsndfileError
        reason = "missing" if not utterance.audio_path.exists() else f"unreadable ({error})"
        raise DataError(f"{utterance.origin}: audio file {utterance.audio_path} is {reason}") from None
    if usable_in_place(info):
        return Path(os.path.abspath(utterance.audio_path)), info.frames, False
    relative = Path(os.path.normpath(utterance.audio_path)).relative_to(os.path.normpath(source))
    destination = (out_dir / "audio" / relative).with_suffix(".wav")
    if destination.exists() and destination.stat().st_mtime >= utterance.audio_path.stat().st_mtime:
        return destination, soundfile.info(str(destination)).frames, True
    return destination, convert_to_wav(utterance.audio_path, destination), True


def convert_corpus(corpus_format, source, out_dir, splits=None, transcripts=None, lowercase=True,
                   strip_punctuation=True, alphabet=None, on_unknown="drop", write_dictionary=True, jobs=2,
                   progress=True):
    """Writes a manifest set for a corpus in one of the layouts above; returns the SplitReports.

    `splits` are the source's split names (default train, dev, test); for `folder`, `transcripts`
    maps output split names to transcript files instead. `alphabet` is an iterable of allowed
    characters (space is always allowed) or None for no check. Every split's transcripts are read
    and checked before OUT is created, so a bad transcript line leaves nothing on disk (audio
    files are read, and found missing, only while converting).
    """
    source, out_dir = Path(source), Path(out_dir).resolve()
    if not source.is_dir():
        raise DataError(f"source folder not found: {source}")
    if on_unknown not in ("drop", "error"):
        raise DataError(f"on_unknown must be 'drop' or 'error', got {on_unknown!r}")
    alphabet = set(alphabet) - {"|"} if alphabet else None
    if corpus_format == "folder":
        if not transcripts:
            raise DataError("the folder format needs at least one SPLIT=TRANSCRIPT_FILE")
        readers = {split: partial(read_folder, source, path) for split, path in transcripts.items()}
    elif corpus_format in FORMATS:
        readers = {OUTPUT_SPLIT_NAMES.get(split, split): partial(FORMATS[corpus_format], source, split)
                   for split in (splits or DEFAULT_SPLITS)}
    else:
        raise DataError(f"unknown corpus format {corpus_format!r} (known: {', '.join([*FORMATS, 'folder'])})")

    checked = {}
    for split, read_split in readers.items():
        report = SplitReport(split=split)
        kept = _normalized_entries(read_split(), report, lowercase, strip_punctuation, alphabet, on_unknown)
        if not kept:
            raise DataError(f"split {split}: no utterance left to write\n{report.describe()}")
        checked[split] = report, kept

    make_output_folder(out_dir)
    remove_partial_files(out_dir)
    reports, transcripts_by_split = [], {}
    for split, (report, kept) in checked.items():
        audio = run_in_threads(lambda pair: _prepare_audio(source, out_dir, pair[0]), kept, jobs, progress,
                               f"audio {split}")
        entries = [ManifestEntry(path, num_samples, words) for (path, num_samples, _), (_, words) in zip(audio, kept)]
        write_split(out_dir, split, entries)
        report.kept, report.converted = len(entries), sum(1 for *_, converted in audio if converted)
        transcripts_by_split[split] = [words for _, words in kept]
        reports.append(report)
    if write_dictionary:
        write_letter_dictionary(out_dir, transcripts_by_split)
    return reports


def parse_alphabet(value):
    """An alphabet from the command line: the symbols of a dict.ltr.txt file, or the characters of a
    string. A value that looks like a path but names no file is refused: read as characters, a
    mistyped dictionary path would silently drop nearly every utterance."""
    path = Path(value)
    if path.is_file():
        return read_dictionary_symbols(path)
    if os.sep in value or path.suffix == ".txt":
        raise DataError(f"--alphabet {value}: no such dictionary file (to give the characters themselves, "
                        "leave out path separators and .txt)")
    return list(value)
