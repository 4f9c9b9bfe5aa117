"""Corpus definitions: the yaml files in `manifests/corpora/` that say what `data synth` builds.

A definition is validated completely before any audio is made, and every error names the file and
the key, so a typo fails in a second rather than after minutes of synthesis.
"""
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from .errors import DataError

REPO_ROOT = Path(__file__).resolve().parents[2]
CORPORA_DIR = REPO_ROOT / "manifests" / "corpora"
BUILT_DIR = REPO_ROOT / "manifests" / "built"
SPLITS = ("train", "valid", "test")
HELD_OUT_SPLITS = ("valid", "test")


@dataclass(frozen=True)
class LanguageSpec:
    code: str
    catalogue: str  # Django locale the sentences come from
    voices: tuple  # espeak-ng voices; one is drawn per utterance
    copies: int  # utterances per sentence
    max_sentences: object  # int or None (all)
    held_out: dict  # split -> int (sentences) or float (share of sentences), for valid and test
    pretrain_copies: int  # copies of each train/valid sentence that go into pretraining
    note: str


@dataclass(frozen=True)
class CorpusDefinition:
    name: str
    path: Path
    description: str
    seed: int  # voices, variants, speed, pitch
    split_seed: int  # which sentences are held out
    variants: tuple
    speed: tuple  # (low, high) words per minute, inclusive
    pitch: tuple  # (low, high), 0-99, inclusive
    languages: dict  # code -> LanguageSpec, in file order
    raw: dict  # the parsed yaml, recorded in corpus.json

    def select_languages(self, codes):
        """The same definition restricted to `codes` (in the definition's order)."""
        unknown = [code for code in codes if code not in self.languages]
        if unknown:
            raise DataError(f"--languages: {', '.join(unknown)} not in {self.path} "
                            f"(it defines {', '.join(self.languages)})")
        kept = {code: spec for code, spec in self.languages.items() if code in codes}
        return replace(self, languages=kept)


def corpus_path(name):
    """The definition file for a shipped corpus name (`demo`, `full`) or an existing yaml path."""
    candidate = Path(name)
    if candidate.is_file():
        return candidate.resolve()
    if candidate.suffix in (".yaml", ".yml"):
        raise DataError(f"corpus definition {candidate} does not exist")
    shipped = CORPORA_DIR / f"{name}.yaml"
    if not shipped.is_file():
        available = ", ".join(sorted(path.stem for path in CORPORA_DIR.glob("*.yaml")))
        raise DataError(f"no corpus named '{name}' in {CORPORA_DIR} (available: {available or 'none'})")
    return shipped


def default_output_dir(definition):
    return BUILT_DIR / definition.name


class _Reader:
    """Typed access to one yaml mapping, with errors that name the file and the dotted key."""

    def __init__(self, mapping, path, prefix=""):
        if not isinstance(mapping, dict):
            raise DataError(f"{path}: {prefix.rstrip('.') or 'the file'} must be a mapping")
        self.mapping, self.path, self.prefix = mapping, path, prefix

    def fail(self, key, requirement):
        value = self.mapping.get(key)
        raise DataError(f"{self.path}: {self.prefix}{key} must be {requirement}, got {value!r}")

    def check_keys(self, allowed):
        unknown = sorted(set(self.mapping) - set(allowed))
        if unknown:
            raise DataError(f"{self.path}: unknown key {self.prefix}{unknown[0]} (allowed: {', '.join(allowed)})")

    def integer(self, key, default=None, minimum=0):
        value = self.mapping.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.fail(key, f"an integer >= {minimum}")
        return value

    def string(self, key, default=None):
        value = self.mapping.get(key, default)
        if not isinstance(value, str) or not value:
            self.fail(key, "a non-empty string")
        return value

    def string_list(self, key, default=None):
        value = self.mapping.get(key, default)
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            self.fail(key, "a non-empty list of strings")
        return tuple(value)

    def integer_range(self, key, default, low, high):
        value = self.mapping.get(key, default)
        if (not isinstance(value, list) or len(value) != 2 or not all(isinstance(v, int) for v in value)
                or not low <= value[0] <= value[1] <= high):
            self.fail(key, f"[low, high] with {low} <= low <= high <= {high}")
        return tuple(value)

    def held_out(self, key, default):
        value = self.mapping.get(key, default)
        reader = _Reader(value, self.path, f"{self.prefix}{key}.")
        reader.check_keys(HELD_OUT_SPLITS)
        sizes = {}
        for split in HELD_OUT_SPLITS:
            size = value.get(split, 0)
            if isinstance(size, float) and 0 <= size < 1:
                sizes[split] = size
            elif isinstance(size, int) and not isinstance(size, bool) and size >= 0:
                sizes[split] = size
            else:
                reader.fail(split, "a number of sentences (integer >= 0) or a share of them (0 <= float < 1)")
        return sizes


_TOP_KEYS = ("name", "description", "seed", "split_seed", "speech", "split", "languages", "pretrain")
_SPEECH_KEYS = ("variants", "speed", "pitch")
_LANGUAGE_KEYS = ("voices", "copies", "catalogue", "max_sentences", "split", "note")


def load_definition(path_or_name):
    path = corpus_path(path_or_name)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise DataError(f"{path}: not valid yaml: {error}") from None
    top = _Reader(raw, path)
    top.check_keys(_TOP_KEYS)
    speech = _Reader(raw.get("speech", {}), path, "speech.")
    speech.check_keys(_SPEECH_KEYS)
    default_held_out = top.held_out("split", {"valid": 0.1, "test": 0.1})
    pretrain = _Reader(raw.get("pretrain", {}) or {}, path, "pretrain.")
    languages_raw = raw.get("languages")
    if not isinstance(languages_raw, dict) or not languages_raw:
        top.fail("languages", "a non-empty mapping from language code to settings")
    unknown_pretrain = sorted(set(pretrain.mapping) - set(languages_raw))
    if unknown_pretrain:
        raise DataError(f"{path}: pretrain.{unknown_pretrain[0]} names a language missing from `languages`")

    languages = {}
    for code, settings in languages_raw.items():
        language = _Reader(settings, path, f"languages.{code}.")
        language.check_keys(_LANGUAGE_KEYS)
        copies = language.integer("copies", minimum=1)
        pretrain_copies = pretrain.integer(code, default=0)
        if pretrain_copies > copies:
            raise DataError(f"{path}: pretrain.{code} is {pretrain_copies} but languages.{code}.copies "
                            f"is only {copies}")
        max_sentences = settings.get("max_sentences")
        if max_sentences is not None:
            language.integer("max_sentences", minimum=1)
        languages[code] = LanguageSpec(
            code=code, catalogue=language.string("catalogue", default=code), voices=language.string_list("voices"),
            copies=copies, max_sentences=max_sentences, held_out=language.held_out("split", default_held_out),
            pretrain_copies=pretrain_copies, note=settings.get("note", ""))

    return CorpusDefinition(
        name=top.string("name", default=path.stem), path=path, description=raw.get("description", ""),
        seed=top.integer("seed", default=1), split_seed=top.integer("split_seed", default=1),
        variants=speech.string_list("variants"), speed=speech.integer_range("speed", [130, 200], 80, 450),
        pitch=speech.integer_range("pitch", [25, 75], 0, 99), languages=languages, raw=raw)
