"""`data check`: every kind of problem is reported with its file and line."""
from pathlib import Path

import numpy as np
import pytest
import soundfile

from fairseq_subnets.data.check import Problem, check_manifest_dir, first_error_message
from fairseq_subnets.data.text import letters
from test_data_cli import run_cli

TRANSCRIPTS = ("hola mundo", "buenos días", "adiós")
LENGTHS = (16000, 8000, 12000)


def tone(length, channels=1):
    samples = (np.sin(np.arange(length) / 7.0) * 3000).astype(np.int16)
    return np.stack([samples] * channels, axis=1) if channels > 1 else samples


@pytest.fixture
def manifest_dir(tmp_path):
    """A correct three-utterance manifest set; each test breaks one thing."""
    audio = tmp_path / "audio"
    audio.mkdir()
    for index, length in enumerate(LENGTHS):
        soundfile.write(audio / f"u{index}.wav", tone(length), 16000, subtype="PCM_16")
    out = tmp_path / "manifests"
    out.mkdir()
    (out / "train.tsv").write_text(f"{audio}\n" + "".join(f"u{i}.wav\t{n}\n" for i, n in enumerate(LENGTHS)))
    (out / "train.wrd").write_text("".join(f"{words}\n" for words in TRANSCRIPTS), encoding="utf-8")
    (out / "train.ltr").write_text("".join(f"{letters(words)}\n" for words in TRANSCRIPTS), encoding="utf-8")
    symbols = sorted({symbol for words in TRANSCRIPTS for symbol in letters(words).split()})
    (out / "dict.ltr.txt").write_text("".join(f"{symbol} 1\n" for symbol in symbols), encoding="utf-8")
    return out


def replace_line(path, line_number, new_line):
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[line_number - 1] = new_line
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def only_problem(manifest_dir):
    problems = check_manifest_dir(manifest_dir)
    assert len(problems) == 1, [str(problem) for problem in problems]
    return str(problems[0])


def test_a_correct_set_has_no_problem(manifest_dir):
    assert check_manifest_dir(manifest_dir) == []
    assert first_error_message(manifest_dir) is None


def test_missing_audio(manifest_dir):
    audio = Path(manifest_dir.parent / "audio" / "u1.wav")
    audio.unlink()
    assert only_problem(manifest_dir) == f"{manifest_dir}/train.tsv:3: audio file not found: {audio}"


def test_unreadable_audio(manifest_dir):
    audio = manifest_dir.parent / "audio" / "u2.wav"
    audio.write_bytes(b"this is not a wav file")
    assert only_problem(manifest_dir).startswith(f"{manifest_dir}/train.tsv:4: unreadable audio {audio}: ")


def test_wrong_sample_rate(manifest_dir):
    audio = manifest_dir.parent / "audio" / "u0.wav"
    soundfile.write(audio, tone(16000), 8000, subtype="PCM_16")
    assert only_problem(manifest_dir) == f"{manifest_dir}/train.tsv:2: sample rate 8000 Hz, expected 16000: {audio}"


def test_wrong_channel_count(manifest_dir):
    audio = manifest_dir.parent / "audio" / "u0.wav"
    soundfile.write(audio, tone(16000, channels=2), 16000, subtype="PCM_16")
    assert only_problem(manifest_dir) == f"{manifest_dir}/train.tsv:2: 2 channels, expected 1 (mono): {audio}"


def test_length_mismatch_between_wav_and_tsv(manifest_dir):
    audio = manifest_dir.parent / "audio" / "u1.wav"
    replace_line(manifest_dir / "train.tsv", 3, "u1.wav\t8001")
    assert only_problem(manifest_dir) == f"{manifest_dir}/train.tsv:3: tsv says 8001 samples but {audio} has 8000"


def test_malformed_tsv_line(manifest_dir):
    replace_line(manifest_dir / "train.tsv", 4, "u2.wav 12000")
    assert only_problem(manifest_dir) == (f"{manifest_dir}/train.tsv:4: expected 'relative/path<TAB>num_samples', "
                                          "got 'u2.wav 12000'")


def test_relative_audio_root(manifest_dir, monkeypatch):
    monkeypatch.chdir(manifest_dir.parent)
    replace_line(manifest_dir / "train.tsv", 1, "audio")
    assert only_problem(manifest_dir).startswith(f"{manifest_dir}/train.tsv:1: audio root 'audio' is not absolute")


def test_missing_audio_root(manifest_dir):
    replace_line(manifest_dir / "train.tsv", 1, "/no/such/folder")
    problems = [str(problem) for problem in check_manifest_dir(manifest_dir)]
    assert problems[0] == f"{manifest_dir}/train.tsv:1: audio root folder /no/such/folder does not exist"


@pytest.mark.parametrize("suffix", ["ltr", "wrd"])
def test_label_file_shorter_than_tsv(manifest_dir, suffix):
    labels = manifest_dir / f"train.{suffix}"
    labels.write_text("".join(labels.read_text(encoding="utf-8").splitlines(keepends=True)[:2]), encoding="utf-8")
    assert only_problem(manifest_dir) == (f"{manifest_dir}/train.tsv:4: train.{suffix} has 2 lines but train.tsv "
                                          "lists 3 utterances; this one has no label")


@pytest.mark.parametrize("suffix", ["ltr", "wrd"])
def test_label_file_longer_than_tsv(manifest_dir, suffix):
    tsv = manifest_dir / "train.tsv"
    tsv.write_text("".join(tsv.read_text().splitlines(keepends=True)[:3]))
    problems = [str(problem) for problem in check_manifest_dir(manifest_dir)]
    assert f"{manifest_dir}/train.{suffix}:3: train.{suffix} has 3 lines but train.tsv lists 2 utterances; this " \
           "line and the rest have no audio" in problems


def test_empty_transcript(manifest_dir):
    replace_line(manifest_dir / "train.wrd", 2, "")
    replace_line(manifest_dir / "train.ltr", 2, "|")
    problems = [str(problem) for problem in check_manifest_dir(manifest_dir)]
    assert problems == [f"{manifest_dir}/train.ltr:2: empty transcript",
                        f"{manifest_dir}/train.wrd:2: empty transcript"]


def test_character_missing_from_dictionary(manifest_dir):
    dictionary = manifest_dir / "dict.ltr.txt"
    dictionary.write_text("".join(line for line in dictionary.read_text(encoding="utf-8").splitlines(keepends=True)
                                  if not line.startswith(("í ", "ó "))), encoding="utf-8")
    problems = [str(problem) for problem in check_manifest_dir(manifest_dir)]
    assert problems == [f"{manifest_dir}/train.ltr:2: characters not in dict.ltr.txt: í",
                        f"{manifest_dir}/train.ltr:3: characters not in dict.ltr.txt: ó"]


def test_missing_dictionary(manifest_dir):
    (manifest_dir / "dict.ltr.txt").unlink()
    assert only_problem(manifest_dir) == f"{manifest_dir}/dict.ltr.txt: missing; fairseq needs it to read train.ltr"


def test_malformed_dictionary_line(manifest_dir):
    with open(manifest_dir / "dict.ltr.txt", "a", encoding="utf-8") as dictionary:
        dictionary.write("x\n")
    lines = (manifest_dir / "dict.ltr.txt").read_text(encoding="utf-8").splitlines()
    assert only_problem(manifest_dir) == f"{manifest_dir}/dict.ltr.txt:{len(lines)}: expected 'symbol count', got 'x'"


def test_letters_that_do_not_spell_the_words(manifest_dir):
    replace_line(manifest_dir / "train.ltr", 1, letters("hola mundi"))
    assert only_problem(manifest_dir) == (f"{manifest_dir}/train.ltr:1: does not spell line 1 of train.wrd "
                                          "('hola mundo')")


def test_missing_split(manifest_dir):
    problems = [str(problem) for problem in check_manifest_dir(manifest_dir, splits=["valid"])]
    assert problems == [f"{manifest_dir}/valid.tsv: manifest for split 'valid' not found"]


def test_problem_string_form():
    assert str(Problem(Path("a/train.tsv"), 7, "bad")) == "a/train.tsv:7: bad"
    assert str(Problem(Path("a/dict.ltr.txt"), None, "missing")) == "a/dict.ltr.txt: missing"


def test_first_error_message_counts_the_rest(manifest_dir):
    (manifest_dir.parent / "audio" / "u0.wav").unlink()
    (manifest_dir.parent / "audio" / "u1.wav").unlink()
    message = first_error_message(manifest_dir)
    assert message.startswith(f"{manifest_dir}/train.tsv:2: audio file not found")
    assert "(and 1 more problems)" in message and f"fairseq-subnets data check {manifest_dir}" in message


def test_cli_prints_problems_and_a_summary_and_fails(manifest_dir, capsys):
    assert run_cli("data", "check", str(manifest_dir)) == 0
    assert "3 utterances" in capsys.readouterr().out
    (manifest_dir.parent / "audio" / "u2.wav").unlink()
    assert run_cli("data", "check", str(manifest_dir), "--split", "train") == 1
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith(f"{manifest_dir}/train.tsv:4: audio file not found")
    assert printed[-1].endswith("1 problems")


def test_benchmark_writes_a_correct_manifest_of_linked_files_and_compares_with_named_references():
    from fairseq_subnets.benchmarks.data_check import (
        DataCheckBenchSettings,
        format_data_check_report,
        run_data_check_benchmark,
    )

    result = run_data_check_benchmark(DataCheckBenchSettings(files=20, seconds=0.1, steps=2, warmup=0),
                                      say=lambda message: None)
    assert result["against_headers"]["reference"] == "header reads alone"
    assert result["against_decoding"]["reference"] == "decoding every file"
    for row in (result["against_headers"], result["against_decoding"]):
        assert row["measured"] == "data check" and len(row["measured_s"]) == 2
        assert row["ratio"] == pytest.approx(row["measured_median_s"] / row["reference_median_s"])
    assert "header reads alone" in format_data_check_report(result)


def test_benchmark_manifest_is_one_utterance_per_file(tmp_path):
    from fairseq_subnets.benchmarks.data_check import DataCheckBenchSettings, write_manifest

    paths = write_manifest(tmp_path, DataCheckBenchSettings(files=3, seconds=0.5))
    assert check_manifest_dir(tmp_path) == []
    lines = (tmp_path / "train.tsv").read_text().splitlines()
    assert lines[1:] == ["0.wav\t8000", "1.wav\t8000", "2.wav\t8000"] and len(set(paths)) == 3


def test_benchmark_cli_rejects_bad_settings(capsys):
    from unittest import mock

    from fairseq_subnets.cli import main as cli_main

    with mock.patch.object(cli_main, "COMMAND_MODULES", ("benchmarks",)):
        assert cli_main.main(["bench", "data", "--files", "0"]) == 2
    assert "files must be at least 1" in capsys.readouterr().err
