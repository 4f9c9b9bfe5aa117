"""`data synth`: determinism, splits, manifest format, resuming after interruption, definitions."""
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import soundfile

from fairseq_subnets.data.check import check_manifest_dir
from fairseq_subnets.data.corpora import corpus_path, load_definition
from fairseq_subnets.data.errors import DataError
from fairseq_subnets.data.synth import synthesize_corpus
from test_data_cli import run_cli

TINY_DEFINITION = """
name: tiny
seed: 3
split_seed: 5
speech: {variants: [m1, f2], speed: [150, 170], pitch: [40, 60]}
split: {valid: 2, test: 2}
languages:
  es: {voices: [es, es-419], copies: 2, max_sentences: 10}
  ca: {voices: [ca], copies: 1, max_sentences: 8}
pretrain: {es: 1, ca: 1}
"""
LANGUAGES = ("es", "ca")
SPLITS = ("train", "valid", "test")


def write_definition(folder, text=TINY_DEFINITION, name="tiny.yaml"):
    path = Path(folder) / name
    path.write_text(text, encoding="utf-8")
    return path


def corpus_files(out_dir):
    """{relative path: bytes} of every file, with each tsv's first (absolute root) line left out."""
    contents = {}
    for path in sorted(Path(out_dir).rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            if path.suffix == ".tsv":
                data = data.split(b"\n", 1)[1]
            contents[path.relative_to(out_dir).as_posix()] = data
    return contents


def read_lines(path):
    return Path(path).read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def tiny_definition(tmp_path_factory):
    return write_definition(tmp_path_factory.mktemp("definition"))


@pytest.fixture(scope="module")
def tiny_corpus(tiny_definition, tmp_path_factory):
    return synthesize_corpus(tiny_definition, tmp_path_factory.mktemp("tiny") / "out", jobs=2, progress=False)


def test_output_layout(tiny_corpus):
    for language in LANGUAGES:
        for split in SPLITS:
            for suffix in ("tsv", "ltr", "wrd"):
                assert (tiny_corpus / language / f"{split}.{suffix}").is_file()
        assert (tiny_corpus / language / "dict.ltr.txt").is_file()
    assert sorted(path.name for path in (tiny_corpus / "pretrain").iterdir()) == ["train.tsv", "valid.tsv"]
    assert len(list((tiny_corpus / "audio" / "es").glob("*.wav"))) == 20
    assert len(list((tiny_corpus / "audio" / "ca").glob("*.wav"))) == 8
    assert not list(tiny_corpus.rglob("*.partial"))


def test_synthesis_is_deterministic_and_independent_of_jobs(tiny_definition, tiny_corpus, tmp_path):
    again = synthesize_corpus(tiny_definition, tmp_path / "again", jobs=1, progress=False)
    assert corpus_files(again) == corpus_files(tiny_corpus)


def test_another_seed_gives_other_audio_but_the_same_split(tiny_definition, tiny_corpus, tmp_path):
    other = synthesize_corpus(tiny_definition, tmp_path / "other", seed=4, languages=["es"], progress=False)
    wav = "audio/es/" + read_lines(tiny_corpus / "es" / "train.tsv")[1].split("\t")[0].split("/")[-1]
    assert (other / wav).read_bytes() != (tiny_corpus / wav).read_bytes()
    for split in SPLITS:
        assert read_lines(other / "es" / f"{split}.wrd") == read_lines(tiny_corpus / "es" / f"{split}.wrd")
    assert not (other / "ca").exists()


def test_splits_are_disjoint_by_sentence_and_keep_all_copies_together(tiny_corpus):
    for language, copies in (("es", 2), ("ca", 1)):
        sentences = {split: read_lines(tiny_corpus / language / f"{split}.wrd") for split in SPLITS}
        assert [len(set(sentences[split])) for split in SPLITS] == [len(set(sentences["train"])), 2, 2]
        for split in SPLITS:
            for other in SPLITS:
                if split != other:
                    assert not set(sentences[split]) & set(sentences[other])
            assert all(sentences[split].count(sentence) == copies for sentence in sentences[split])


def test_manifest_format_is_exact(tiny_corpus):
    for language in LANGUAGES:
        for split in SPLITS:
            tsv = read_lines(tiny_corpus / language / f"{split}.tsv")
            assert tsv[0] == str(tiny_corpus / "audio") and Path(tsv[0]).is_absolute()
            words = read_lines(tiny_corpus / language / f"{split}.wrd")
            ltr = read_lines(tiny_corpus / language / f"{split}.ltr")
            assert len(tsv) - 1 == len(words) == len(ltr)
            for line, sentence, letters_line in zip(tsv[1:], words, ltr):
                relative, num_samples = line.split("\t")
                assert relative.startswith(f"{language}/{language}_") and relative.endswith(".wav")
                info = soundfile.info(str(tiny_corpus / "audio" / relative))
                assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
                assert info.frames == int(num_samples) > 8000
                assert letters_line == " ".join(list(sentence.replace(" ", "|"))) + " |"
    assert check_manifest_dir(tiny_corpus / "es") == []
    assert check_manifest_dir(tiny_corpus / "pretrain") == []


def test_dictionary_counts_train_symbols_and_covers_every_split(tiny_corpus):
    lines = read_lines(tiny_corpus / "es" / "dict.ltr.txt")
    dictionary = [(line.split()[0], int(line.split()[1])) for line in lines]
    train = Counter(symbol for line in read_lines(tiny_corpus / "es" / "train.ltr") for symbol in line.split())
    every = {symbol for split in SPLITS for line in read_lines(tiny_corpus / "es" / f"{split}.ltr")
             for symbol in line.split()}
    assert {symbol for symbol, _ in dictionary} == every
    assert all(count == train[symbol] for symbol, count in dictionary)
    assert dictionary == sorted(dictionary, key=lambda item: (-item[1], item[0]))


def test_pretraining_mix_and_corpus_json(tiny_corpus):
    summary = json.loads((tiny_corpus / "corpus.json").read_text(encoding="utf-8"))
    pretrain_train = read_lines(tiny_corpus / "pretrain" / "train.tsv")[1:]
    assert len(pretrain_train) == 6 + 4  # one copy of each es and ca train sentence
    assert all(line.split("\t")[0].rsplit("_", 1)[1] == "0.wav" for line in pretrain_train)
    assert summary["pretrain"]["train"]["utterances_by_language"] == {"es": 6, "ca": 4}
    assert summary["splits"]["es"]["train"] == {**summary["splits"]["es"]["train"], "utterances": 12, "sentences": 6}
    assert summary["total_utterances"] == 28 and summary["total_hours"] > 0
    assert summary["source"]["licence"] == "BSD-3-Clause" and summary["seed"] == 3


def test_rerun_into_the_same_folder_changes_nothing(tiny_definition, tiny_corpus):
    before = {path: path.stat().st_mtime_ns for path in (tiny_corpus / "audio").rglob("*.wav")}
    contents = corpus_files(tiny_corpus)
    synthesize_corpus(tiny_definition, tiny_corpus, progress=False)
    assert {path: path.stat().st_mtime_ns for path in (tiny_corpus / "audio").rglob("*.wav")} == before
    assert corpus_files(tiny_corpus) == contents


def test_keyboard_interrupt_leaves_only_complete_files_and_rerun_completes(
        tiny_definition, tiny_corpus, tmp_path, monkeypatch):
    real_write, calls = soundfile.write, []

    def write_then_interrupt(file, data, *args, **kwargs):
        calls.append(file)
        if len(calls) == 7:  # half a wav on disk, then Ctrl-C
            Path(file).write_bytes(b"RIFF")
            raise KeyboardInterrupt
        return real_write(file, data, *args, **kwargs)

    monkeypatch.setattr(soundfile, "write", write_then_interrupt)  # data.audio imports it when it writes
    out = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        synthesize_corpus(tiny_definition, out, jobs=2, progress=False)
    monkeypatch.setattr(soundfile, "write", real_write)

    assert not list(out.rglob("*.partial"))
    assert not (out / "corpus.json").exists() and not (out / "es").exists()
    wavs = list((out / "audio").rglob("*.wav"))
    assert 0 < len(wavs) < 28
    for wav in wavs:
        assert wav.read_bytes() == (tiny_corpus / wav.relative_to(out)).read_bytes()
    synthesize_corpus(tiny_definition, out, jobs=2, progress=False)
    assert corpus_files(out) == corpus_files(tiny_corpus)


def test_killed_run_resumes_to_the_same_bytes(tmp_path):
    """SIGKILL allows no cleanup: leftovers must be hidden .partial files, which the rerun removes."""
    definition = write_definition(tmp_path, TINY_DEFINITION.replace("max_sentences: 10", "max_sentences: 40")
                                  .replace("copies: 2", "copies: 3"))
    out = tmp_path / "killed"
    script = ("import sys; from fairseq_subnets.data.synth import synthesize_corpus; "
              "synthesize_corpus(sys.argv[1], sys.argv[2], jobs=2, progress=False)")
    process = subprocess.Popen([sys.executable, "-c", script, str(definition), str(out)])
    audio = out / "audio" / "es"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(audio.glob("*.wav")) if audio.exists() else []) < 20:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "corpus.json").exists(), "the run finished before it could be killed"
    for wav in out.rglob("*.wav"):
        assert soundfile.info(str(wav)).frames > 0

    synthesize_corpus(definition, out, jobs=2, progress=False)
    reference = synthesize_corpus(definition, tmp_path / "reference", jobs=2, progress=False)
    assert not list(out.rglob("*.partial"))
    assert corpus_files(out) == corpus_files(reference)


def test_other_settings_in_an_existing_folder_are_refused(tiny_definition, tiny_corpus):
    with pytest.raises(DataError, match=r"other settings \(seed differ"):
        synthesize_corpus(tiny_definition, tiny_corpus, seed=99, progress=False)


@pytest.mark.parametrize("change, message", [
    (("copies: 1, max", "copies: 0, max"), r"languages\.ca\.copies must be an integer >= 1, got 0"),
    (("pretrain: {es: 1, ca: 1}", "pretrain: {es: 3, ca: 1}"), r"pretrain\.es is 3 but languages\.es\.copies is"),
    (("pretrain: {es: 1, ca: 1}", "pretrain: {xx: 1}"), r"pretrain\.xx names a language missing"),
    (("split_seed: 5", "split_sed: 5"), r"unknown key split_sed"),
    (("split: {valid: 2, test: 2}", "split: {valid: 1.5}"), r"split\.valid must be a number of sentences"),
    (("split: {valid: 2, test: 2}", "split: {valid: 5, test: 5}"), r"languages\.es: 10 sentences cannot give 5 valid"),
    (("voices: [ca]", "voices: [xx-nope]"), r"languages\.ca\.voices: espeak-ng has no voice 'xx-nope'"),
    (("variants: [m1, f2]", "variants: [m1, nope]"), r"speech\.variants: espeak-ng has no variant 'nope'"),
])
def test_definition_errors_name_file_and_key(tmp_path, change, message):
    definition = write_definition(tmp_path, TINY_DEFINITION.replace(*change))
    with pytest.raises(DataError, match=message) as error:
        synthesize_corpus(definition, tmp_path / "out", progress=False)
    assert str(error.value).startswith(f"{definition}: ")
    assert not (tmp_path / "out").exists()


def test_unknown_language_selection_is_refused(tiny_definition, tmp_path):
    with pytest.raises(DataError, match="--languages: de not in"):
        synthesize_corpus(tiny_definition, tmp_path / "out", languages=["es", "de"], progress=False)


@pytest.mark.parametrize("name", ["demo", "full"])
def test_shipped_definitions_are_valid(name):
    definition = load_definition(name)
    assert corpus_path(name).parent.name == "corpora"
    assert {"en", "es"} <= set(definition.languages)
    assert definition.languages["ast"].pretrain_copies == 0
    pretrain = {code: spec.pretrain_copies for code, spec in definition.languages.items()}
    assert pretrain["en"] == max(pretrain.values()) and pretrain["ca"] <= pretrain["es"]


def test_full_definition_covers_the_seven_languages():
    assert set(load_definition("full").languages) == {"en", "es", "de", "fr", "pl", "ca", "ast"}


def test_cli_synth_and_check(tiny_definition, tiny_corpus, tmp_path, capsys):
    out = tmp_path / "cli"
    assert run_cli("data", "synth", "--corpus", str(tiny_definition), "--out", str(out), "--quiet",
                   "--languages", "ca") == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}: 8 utterances" in printed and "ca: train 4 (4 sentences)" in printed
    assert (out / "ca" / "train.wrd").read_bytes() == (tiny_corpus / "ca" / "train.wrd").read_bytes()
    assert run_cli("data", "check", str(out / "ca")) == 0
    assert run_cli("data", "synth", "--corpus", str(tiny_definition), "--out", str(out), "--languages", "xx") == 2
    assert "--languages: xx not in" in capsys.readouterr().err
