"""`data check`: find what would make fairseq fail (or silently mistrain) on a manifest set, early.

Each problem names a file and a line. Audio is inspected with `soundfile.info` (header only, no
decoding), so thousands of files take about a second and the check can run when training starts.

Line numbers: in `{split}.tsv` line 1 is the audio root and utterance i (from 0) is line i + 2;
in `.ltr`/`.wrd` utterance i is line i + 1. A problem about a whole file that has no line (a
missing dictionary) prints as `file: message`.
"""
from dataclasses import dataclass
from pathlib import Path

import soundfile

from .audio import SAMPLE_RATE
from .manifest import DICTIONARY_NAME
from .text import letters

LABEL_SUFFIXES = ("ltr", "wrd")
WORD_BOUNDARY = "|"


@dataclass(frozen=True)
class Problem:
    file: Path
    line: object  # int, or None for a whole-file problem
    message: str

    def __str__(self):
        return f"{self.file}:{self.line}: {self.message}" if self.line is not None else f"{self.file}: {self.message}"


@dataclass
class CheckSummary:
    splits: list
    utterances: int
    hours: float
    problems: list


def _read_lines(path):
    return path.read_text(encoding="utf-8").splitlines()


def _check_tsv(tsv, sample_rate, problems):
    """Checks the root and every audio line; returns the number of utterance lines and their samples."""
    lines = _read_lines(tsv)
    if not lines:
        problems.append(Problem(tsv, 1, "empty manifest; the first line must be the audio root folder"))
        return 0, 0
    root = Path(lines[0].strip())
    if not root.is_absolute():
        problems.append(Problem(tsv, 1, f"audio root '{root}' is not absolute (fairseq-hydra-train changes the "
                                        "working directory, so relative roots break)"))
    elif not root.is_dir():
        problems.append(Problem(tsv, 1, f"audio root folder {root} does not exist"))
    total_samples = 0
    for line_number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != 2 or not fields[1].strip().isdigit():
            problems.append(Problem(tsv, line_number, f"expected 'relative/path<TAB>num_samples', got {line!r}"))
            continue
        audio, listed = root / fields[0], int(fields[1])
        total_samples += listed
        if not audio.is_file():
            problems.append(Problem(tsv, line_number, f"audio file not found: {audio}"))
            continue
        try:
            info = soundfile.info(str(audio))
        except RuntimeError as error:  # soundfile's LibsndfileError
            problems.append(Problem(tsv, line_number, f"unreadable audio {audio}: {error}"))
            continue
        if info.samplerate != sample_rate:
            problems.append(Problem(tsv, line_number,
                                    f"sample rate {info.samplerate} Hz, expected {sample_rate}: {audio}"))
        if info.channels != 1:
            problems.append(Problem(tsv, line_number, f"{info.channels} channels, expected 1 (mono): {audio}"))
        if info.frames != listed:
            problems.append(Problem(tsv, line_number, f"tsv says {listed} samples but {audio} has {info.frames}"))
    return len(lines) - 1, total_samples


def _check_label_count(tsv, labels, label_lines, utterance_count, problems):
    """Reports a count mismatch at the first utterance without a label or the first label too many."""
    if len(label_lines) < utterance_count:
        problems.append(Problem(tsv, len(label_lines) + 2, f"{labels.name} has {len(label_lines)} lines but "
                                f"{tsv.name} lists {utterance_count} utterances; this one has no label"))
    elif len(label_lines) > utterance_count:
        problems.append(Problem(labels, utterance_count + 1, f"{labels.name} has {len(label_lines)} lines but "
                                f"{tsv.name} lists {utterance_count} utterances; this line and the rest have no audio"))


def _read_dictionary(path, problems):
    symbols = set()
    for line_number, line in enumerate(_read_lines(path), start=1):
        fields = line.split()
        if len(fields) < 2 or not fields[1].isdigit():
            problems.append(Problem(path, line_number, f"expected 'symbol count', got {line!r}"))
        else:
            symbols.add(fields[0])
    return symbols


def _check_labels(manifest_dir, split, utterance_count, dictionary, problems):
    tsv = manifest_dir / f"{split}.tsv"
    lines_by_suffix = {}
    for suffix in LABEL_SUFFIXES:
        labels = manifest_dir / f"{split}.{suffix}"
        if not labels.exists():
            continue
        label_lines = lines_by_suffix[suffix] = _read_lines(labels)
        _check_label_count(tsv, labels, label_lines, utterance_count, problems)
        for line_number, line in enumerate(label_lines, start=1):
            if not line.replace(WORD_BOUNDARY, " ").strip():
                problems.append(Problem(labels, line_number, "empty transcript"))

    if "ltr" in lines_by_suffix:
        ltr = manifest_dir / f"{split}.ltr"
        if dictionary is None:
            problems.append(Problem(manifest_dir / DICTIONARY_NAME, None,
                                    f"missing; fairseq needs it to read {ltr.name}"))
        else:
            for line_number, line in enumerate(lines_by_suffix["ltr"], start=1):
                unknown = sorted(set(line.split()) - dictionary)
                if unknown:
                    problems.append(Problem(ltr, line_number, f"characters not in {DICTIONARY_NAME}: "
                                                              f"{' '.join(unknown)}"))
        if "wrd" in lines_by_suffix:
            for line_number, (ltr_line, wrd_line) in enumerate(zip(lines_by_suffix["ltr"], lines_by_suffix["wrd"]), 1):
                if wrd_line.strip() and ltr_line != letters(wrd_line.strip()):
                    problems.append(Problem(ltr, line_number, f"does not spell line {line_number} of {split}.wrd "
                                                              f"({wrd_line.strip()!r})"))


def check_manifests(manifest_dir, splits=None, sample_rate=SAMPLE_RATE):
    """Checks every split (default: every `*.tsv` in the folder) and returns a CheckSummary."""
    manifest_dir = Path(manifest_dir)
    if not manifest_dir.is_dir():
        return CheckSummary([], 0, 0.0, [Problem(manifest_dir, None, "manifest folder not found")])
    splits = list(splits) if splits else sorted(path.stem for path in manifest_dir.glob("*.tsv"))
    problems = []
    if not splits:
        problems.append(Problem(manifest_dir, None, "no *.tsv manifest in this folder"))
    dictionary_path = manifest_dir / DICTIONARY_NAME
    dictionary = _read_dictionary(dictionary_path, problems) if dictionary_path.exists() else None
    utterances = samples = 0
    for split in splits:
        tsv = manifest_dir / f"{split}.tsv"
        if not tsv.is_file():
            problems.append(Problem(tsv, None, f"manifest for split '{split}' not found"))
            continue
        count, split_samples = _check_tsv(tsv, sample_rate, problems)
        utterances, samples = utterances + count, samples + split_samples
        _check_labels(manifest_dir, split, count, dictionary, problems)
    return CheckSummary(splits, utterances, samples / sample_rate / 3600, problems)


def check_manifest_dir(path, splits=None):
    """The problems of a manifest folder (empty when fairseq can use it)."""
    return check_manifests(path, splits).problems


def first_error_message(path, splits=None):
    """None if the manifests are fine, else one message to fail a training job with before it starts."""
    problems = check_manifest_dir(path, splits)
    if not problems:
        return None
    more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
    return f"{problems[0]}{more}; run `fairseq-subnets data check {path}` to list them all"
