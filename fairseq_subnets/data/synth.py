"""`data synth`: a spoken multilingual corpus made offline with espeak-ng from Django's catalogues.

Output layout (OUT = the output folder):

    OUT/audio/<lang>/<utt_id>.wav                 16 kHz mono 16-bit
    OUT/<lang>/{train,valid,test}.{tsv,ltr,wrd}   fine-tuning manifests, split by sentence
    OUT/<lang>/dict.ltr.txt
    OUT/pretrain/{train,valid}.tsv                unlabelled mix, imbalanced as the definition says
    OUT/corpus.json                               what was built, from what, how much

Reproducibility: every random choice for an utterance (voice, variant, speed, pitch) comes from a
generator seeded with (seed, language, sentence, copy), so the bytes of a wav depend neither on
the number of threads nor on which utterances were already made. espeak-ng itself is
deterministic and the resampler does not dither.

Resuming: wavs are written atomically, so an existing wav is complete and is kept. The settings
that decide a wav's bytes are stored in OUT/audio/settings.json; a rerun with different settings
into the same folder stops with an error instead of mixing two corpora.
"""
import io
import json
import random
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .audio import SAMPLE_RATE, to_target_rate_mono_int16, write_wav_atomic
from .catalogues import catalogue_sentences, sentences_digest, source_info
from .corpora import SPLITS, default_output_dir, load_definition
from .errors import DataError
from .files import make_output_folder, remove_partial_files, run_in_threads, write_text_atomic
from .manifest import ManifestEntry, write_letter_dictionary, write_split

ESPEAK = "espeak-ng"
PRETRAIN_SPLITS = ("train", "valid")
SETTINGS_NAME = "settings.json"


@dataclass(frozen=True)
class PlannedUtterance:
    utt_id: str
    language: str
    split: str
    sentence: str
    copy: int
    voice: str  # espeak-ng -v argument, voice+variant
    speed: int
    pitch: int
    wav_path: Path


def _espeak_output(*arguments):
    if shutil.which(ESPEAK) is None:
        raise DataError(f"{ESPEAK} is not installed; install it with `apt-get install espeak-ng` "
                        "(scripts/setup_venv.sh does this)")
    return subprocess.run([ESPEAK, *arguments], capture_output=True, text=True, check=True).stdout


@lru_cache(maxsize=None)
def espeak_version():
    match = re.search(r"text-to-speech:\s*(\S+)", _espeak_output("--version"))
    return match.group(1) if match else "unknown"


def _check_voices_exist(definition):
    """Fails before synthesis if a voice or variant of the definition is unknown to this espeak-ng."""
    voice_table = [line.split() for line in _espeak_output("--voices").splitlines()[1:]]
    voices = {column for row in voice_table if len(row) >= 5 for column in (row[1], row[3], row[4].split("/")[-1])}
    variant_table = [line.split() for line in _espeak_output("--voices=variant").splitlines()[1:]]
    variants = {row[4].removeprefix("!v/") for row in variant_table if len(row) >= 5}
    for variant in definition.variants:
        if variant not in variants:
            raise DataError(f"{definition.path}: speech.variants: espeak-ng has no variant '{variant}' "
                            f"(see `espeak-ng --voices=variant`)")
    for spec in definition.languages.values():
        for voice in spec.voices:
            if voice not in voices:
                raise DataError(f"{definition.path}: languages.{spec.code}.voices: espeak-ng has no voice "
                                f"'{voice}' (see `espeak-ng --voices`)")


def split_sentences(sentence_count, spec, definition):
    """{split: sorted sentence indices}: a seeded shuffle, cut to max_sentences, then valid, test, train."""
    order = list(range(sentence_count))
    random.Random(f"{definition.split_seed}/{spec.code}").shuffle(order)
    if spec.max_sentences:
        order = order[:spec.max_sentences]
    sizes = {split: size if isinstance(size, int) else round(size * len(order))
             for split, size in spec.held_out.items()}
    if sizes["valid"] + sizes["test"] >= len(order):
        raise DataError(f"{definition.path}: languages.{spec.code}: {len(order)} sentences cannot give "
                        f"{sizes['valid']} valid and {sizes['test']} test sentences and leave some for training")
    boundary = sizes["valid"] + sizes["test"]
    return {"valid": sorted(order[:sizes["valid"]]), "test": sorted(order[sizes["valid"]:boundary]),
            "train": sorted(order[boundary:])}


def plan_corpus(definition, seed, out_dir):
    """Every utterance to make, in manifest order, plus each language's sentence list."""
    plan, sentences_by_language = [], {}
    for code, spec in definition.languages.items():
        sentences = catalogue_sentences(spec.catalogue)
        sentences_by_language[code] = sentences
        split_of = {index: split for split, indices in split_sentences(len(sentences), spec, definition).items()
                    for index in indices}
        for index in sorted(split_of):
            for copy in range(spec.copies):
                rng = random.Random(f"{seed}/{code}/{sentences[index]}/{copy}")
                voice = f"{rng.choice(spec.voices)}+{rng.choice(definition.variants)}"
                utt_id = f"{code}_{index:04d}_{copy}"
                plan.append(PlannedUtterance(
                    utt_id=utt_id, language=code, split=split_of[index], sentence=sentences[index], copy=copy,
                    voice=voice, speed=rng.randint(*definition.speed), pitch=rng.randint(*definition.pitch),
                    wav_path=out_dir / "audio" / code / f"{utt_id}.wav"))
    return plan, sentences_by_language


def _settings(definition, seed, sentences_by_language):
    """Everything that decides the bytes of a wav, per language where it can differ."""
    return {
        "seed": seed, "variants": list(definition.variants), "speed": list(definition.speed),
        "pitch": list(definition.pitch), "sample_rate": SAMPLE_RATE, "espeak_ng": espeak_version(),
        "text_source": source_info()["version"],
        "languages": {code: {"catalogue": spec.catalogue, "voices": list(spec.voices),
                             "sentences_sha256": sentences_digest(sentences_by_language[code])}
                      for code, spec in definition.languages.items()},
    }


def _record_settings(audio_dir, settings):
    """Stores `settings`, or stops if the wavs already in `audio_dir` were made with other ones."""
    path = audio_dir / SETTINGS_NAME
    stored = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"languages": {}}
    differences = [key for key in settings if key != "languages" and key in stored and stored[key] != settings[key]]
    differences += [f"languages.{code}" for code, value in settings["languages"].items()
                    if stored["languages"].get(code, value) != value]
    if differences:
        raise DataError(f"{audio_dir.parent} holds audio made with other settings ({', '.join(differences)} "
                        f"differ from {path}); delete that folder or choose another --out")
    merged = {**settings, "languages": {**stored["languages"], **settings["languages"]}}
    write_text_atomic(path, json.dumps(merged, indent=2, ensure_ascii=False) + "\n")


def synthesize_utterance(utterance):
    """Makes one wav unless it already exists (then complete, see the module docstring); returns its length."""
    import soundfile  # here, so that importing the demo's settings (fairseq-subnets --help) stays light

    if utterance.wav_path.exists():
        return soundfile.info(str(utterance.wav_path)).frames
    command = [ESPEAK, "-b", "1", "-v", utterance.voice, "-s", str(utterance.speed), "-p", str(utterance.pitch),
               "--stdout"]
    result = subprocess.run(command, input=utterance.sentence.encode("utf-8"), capture_output=True)
    if result.returncode != 0 or not result.stdout:
        raise DataError(f"{' '.join(command)} failed on {utterance.utt_id} ({utterance.sentence!r}): "
                        f"{result.stderr.decode(errors='replace').strip() or 'no audio'}")
    samples, sample_rate = soundfile.read(io.BytesIO(result.stdout), dtype="float64")
    converted = to_target_rate_mono_int16(samples, sample_rate)
    write_wav_atomic(utterance.wav_path, converted)
    return len(converted)


def _hours(sample_count):
    return round(sample_count / SAMPLE_RATE / 3600, 4)


def _write_manifests(definition, out_dir, plan, lengths):
    """The per-language fine-tuning sets and the pretraining mix; returns the counts for corpus.json."""
    entries = {utterance.utt_id: ManifestEntry(utterance.wav_path, lengths[utterance.utt_id], utterance.sentence)
               for utterance in plan}
    audio_root = out_dir / "audio"
    statistics = {}
    for code in definition.languages:
        language_plan = [utterance for utterance in plan if utterance.language == code]
        transcripts, statistics[code] = {}, {}
        for split in SPLITS:
            split_plan = [utterance for utterance in language_plan if utterance.split == split]
            write_split(out_dir / code, split, [entries[u.utt_id] for u in split_plan], audio_root=audio_root)
            transcripts[split] = [utterance.sentence for utterance in split_plan]
            statistics[code][split] = {
                "utterances": len(split_plan), "sentences": len({utterance.sentence for utterance in split_plan}),
                "hours": _hours(sum(lengths[utterance.utt_id] for utterance in split_plan))}
        write_letter_dictionary(out_dir / code, transcripts)

    pretrain = {}
    for split in PRETRAIN_SPLITS:
        chosen = [utterance for utterance in plan if utterance.split == split
                  and utterance.copy < definition.languages[utterance.language].pretrain_copies]
        if not chosen:
            continue
        write_split(out_dir / "pretrain", split, [entries[u.utt_id] for u in chosen], labelled=False,
                    audio_root=audio_root)
        by_language = {code: sum(1 for utterance in chosen if utterance.language == code)
                       for code in definition.languages}
        pretrain[split] = {"utterances": len(chosen), "hours": _hours(sum(lengths[u.utt_id] for u in chosen)),
                           "utterances_by_language": {code: n for code, n in by_language.items() if n}}
    return statistics, pretrain


def synthesize_corpus(definition_path, out_dir=None, seed=None, jobs=2, languages=None, progress=True):
    """Builds the corpus of a definition (a path or a shipped name such as `demo`); returns out_dir.

    `seed` overrides the definition's synthesis seed (voices, speed, pitch); the sentence split has
    its own `split_seed`, so test sentences stay the same across synthesis seeds.
    """
    definition = load_definition(definition_path)
    if languages:
        definition = definition.select_languages(languages)
    seed = definition.seed if seed is None else seed
    out_dir = Path(out_dir) if out_dir else default_output_dir(definition)
    out_dir = out_dir.resolve()
    _check_voices_exist(definition)
    plan, sentences_by_language = plan_corpus(definition, seed, out_dir)

    audio_dir = out_dir / "audio"
    make_output_folder(audio_dir)
    remove_partial_files(out_dir)
    _record_settings(audio_dir, _settings(definition, seed, sentences_by_language))

    lengths = dict(zip((u.utt_id for u in plan), run_in_threads(synthesize_utterance, plan, jobs, progress, "synth")))
    statistics, pretrain = _write_manifests(definition, out_dir, plan, lengths)
    summary = {
        "name": definition.name, "definition_file": str(definition.path), "definition": definition.raw,
        "seed": seed, "split_seed": definition.split_seed, "languages": list(definition.languages),
        "sample_rate": SAMPLE_RATE, "source": source_info(),
        "synthesizer": {"name": "espeak-ng", "version": espeak_version()},
        "splits": statistics, "pretrain": pretrain,
        "total_utterances": len(plan), "total_hours": _hours(sum(lengths.values())),
    }
    write_text_atomic(out_dir / "corpus.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return out_dir
