"""`data manifest`: converters read each corpus's real layout and write exact fairseq manifests."""
from pathlib import Path

import numpy as np
import pytest
import soundfile

from fairseq_subnets.data.check import check_manifest_dir
from fairseq_subnets.data.convert import convert_corpus, parse_alphabet
from fairseq_subnets.data.errors import DataError
from test_data_cli import run_cli

SPANISH = "abcdefghijklmnopqrstuvwxyzáéíóúñü'"


def write_audio(path, length, sample_rate=16000, channels=1, audio_format=None):
    samples = np.sin(np.arange(length) / 5.0) * 0.3
    if channels > 1:
        samples = np.stack([samples] * channels, axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, samples, sample_rate, format=audio_format)
    return path


def write_lines(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def read(path):
    return Path(path).read_text(encoding="utf-8")


def convert(*args, **kwargs):
    return convert_corpus(*args, progress=False, **kwargs)


@pytest.fixture
def fleurs(tmp_path):
    source = tmp_path / "fleurs" / "es_419"
    rows = {
        "train": [("1001", "Hola, Mundo.", "hola mundo", 16000), ("1002", "¿Qué tal?", "qué tal", 8000)],
        "dev": [("2001", "Adiós.", "adiós", 4000)],
        "test": [("3001", "Buenos días.", "buenos días", 6000)],
    }
    for split, split_rows in rows.items():
        write_lines(source / f"{split}.tsv", [
            f"{utt}\t{utt}.wav\t{raw}\t{normalized}\t{' '.join(normalized.replace(' ', '|'))} |\t{length}\tFEMALE"
            for utt, raw, normalized, length in split_rows])
        for utt, _, _, length in split_rows:
            write_audio(source / "audio" / split / f"{utt}.wav", length)
    return source


def test_fleurs_layout(fleurs, tmp_path):
    out = tmp_path / "out"
    reports = convert("fleurs", fleurs, out)
    assert [(report.split, report.kept, report.converted) for report in reports] == [
        ("train", 2, 0), ("valid", 1, 0), ("test", 1, 0)]
    assert read(out / "train.tsv") == f"{fleurs}/audio/train\n1001.wav\t16000\n1002.wav\t8000\n"
    assert read(out / "train.wrd") == "hola mundo\nqué tal\n"
    assert read(out / "train.ltr") == "h o l a | m u n d o |\nq u é | t a l |\n"
    assert read(out / "valid.tsv") == f"{fleurs}/audio/dev\n2001.wav\t4000\n"
    assert read(out / "test.wrd") == "buenos días\n"
    # Symbols of every split, counted in train only; those of valid/test alone have count 0.
    assert read(out / "dict.ltr.txt") == (
        "| 4\na 2\nl 2\no 2\nu 2\nd 1\nh 1\nm 1\nn 1\nq 1\nt 1\né 1\nb 0\ne 0\ni 0\ns 0\ní 0\nó 0\n")
    assert check_manifest_dir(out) == []


def test_fleurs_missing_audio_names_the_transcript_line(fleurs, tmp_path):
    (fleurs / "audio" / "train" / "1002.wav").unlink()
    with pytest.raises(DataError, match=rf"{fleurs}/train.tsv:2: audio file .*1002.wav is missing"):
        convert("fleurs", fleurs, tmp_path / "out")


def test_fleurs_malformed_line(fleurs, tmp_path):
    write_lines(fleurs / "dev.tsv", ["2001\t2001.wav\tonly three fields"])
    with pytest.raises(DataError, match=rf"{fleurs}/dev.tsv:1: expected at least 7 tab-separated fields, got 3"):
        convert("fleurs", fleurs, tmp_path / "out", splits=["dev"])


CURRENT_CV_HEADER = ("client_id", "path", "sentence_id", "sentence", "sentence_domain", "up_votes", "down_votes",
                     "age", "gender", "accents", "variant", "locale", "segment")
OLDER_CV_HEADER = ("client_id", "path", "sentence", "up_votes", "down_votes", "age", "gender", "accents", "locale",
                   "segment")


@pytest.mark.parametrize("header", [CURRENT_CV_HEADER, OLDER_CV_HEADER], ids=["v17-style", "v7-style"])
def test_common_voice_mp3_is_resampled_to_16k_wav(tmp_path, header):
    source = tmp_path / "cv-corpus" / "es"
    clips = {"train": [("common_voice_es_1.mp3", "Buenos días, señor."), ("common_voice_es_2.mp3", "¡Vamos!")],
             "dev": [("common_voice_es_3.mp3", "Otra vez")], "test": [("common_voice_es_4.mp3", "Fin del texto")]}
    for split, rows in clips.items():
        lines = ["\t".join(header)]
        for clip, sentence in rows:
            values = {"client_id": "c0ffee", "path": clip, "sentence": sentence, "locale": "es", "up_votes": "2",
                      "down_votes": "0"}
            lines.append("\t".join(values.get(column, "") for column in header))
            write_audio(source / "clips" / clip, 48000, sample_rate=48000, audio_format="MP3")
        write_lines(source / f"{split}.tsv", lines)
    out = tmp_path / "out"
    reports = convert("commonvoice", source, out)
    assert [(report.split, report.kept, report.converted) for report in reports] == [
        ("train", 2, 2), ("valid", 1, 1), ("test", 1, 1)]
    assert read(out / "train.tsv") == f"{out}/audio/clips\ncommon_voice_es_1.wav\t16000\ncommon_voice_es_2.wav\t16000\n"
    assert read(out / "train.wrd") == "buenos días señor\nvamos\n"
    info = soundfile.info(str(out / "audio" / "clips" / "common_voice_es_1.wav"))
    assert (info.format, info.samplerate, info.channels, info.frames) == ("WAV", 16000, 1, 16000)
    assert check_manifest_dir(out) == []


def test_common_voice_without_sentence_column(tmp_path):
    source = tmp_path / "cv"
    write_lines(source / "train.tsv", ["client_id\tpath\ttext", "a\tb.mp3\tc"])
    with pytest.raises(DataError, match=rf"{source}/train.tsv:1: header has no sentence column"):
        convert("commonvoice", source, tmp_path / "out", splits=["train"])


def test_mls_layout(tmp_path):
    source = tmp_path / "mls_spanish"
    transcripts = {"train": [("10_20_000001", "una frase de prueba", 7000), ("11_21_000002", "otra frase", 5000)],
                   "dev": [("12_22_000003", "la tercera", 3000)], "test": [("13_23_000004", "y la cuarta", 2000)]}
    for split, rows in transcripts.items():
        write_lines(source / split / "transcripts.txt", [f"{utt}\t{text}" for utt, text, _ in rows])
        for utt, _, length in rows:
            speaker, book, _ = utt.split("_")
            write_audio(source / split / "audio" / speaker / book / f"{utt}.flac", length)
    out = tmp_path / "out"
    convert("mls", source, out)
    assert read(out / "train.tsv") == (f"{source}/train/audio\n10/20/10_20_000001.flac\t7000\n"
                                       "11/21/11_21_000002.flac\t5000\n")
    assert read(out / "train.ltr") == "u n a | f r a s e | d e | p r u e b a |\no t r a | f r a s e |\n"
    assert read(out / "valid.tsv") == f"{source}/dev/audio/12/22\n12_22_000003.flac\t3000\n"
    assert check_manifest_dir(out) == []


def test_mls_bad_utterance_id(tmp_path):
    source = tmp_path / "mls"
    write_lines(source / "train" / "transcripts.txt", ["10-20-1\ttext"])
    with pytest.raises(DataError, match=rf"{source}/train/transcripts.txt:1: utterance id '10-20-1' is not"):
        convert("mls", source, tmp_path / "out", splits=["train"])


@pytest.fixture
def folder(tmp_path):
    audio = tmp_path / "my_corpus" / "audio"
    write_audio(audio / "a.wav", 16000)
    write_audio(audio / "sub" / "b.flac", 9000, audio_format="FLAC")
    write_audio(audio / "c.wav", 22050, sample_rate=22050, channels=2)
    write_lines(tmp_path / "my_corpus" / "train.txt", ["a\tHello there.", "sub/b.flac\tSecond, line!"])
    write_lines(tmp_path / "my_corpus" / "valid.txt", ["c\tThird one"])
    return audio


def test_folder_with_ids_and_paths_converting_what_fairseq_cannot_read(folder, tmp_path):
    out = tmp_path / "out"
    reports = convert("folder", folder, out, transcripts={"train": folder.parent / "train.txt",
                                                          "valid": folder.parent / "valid.txt"})
    assert [(report.split, report.kept, report.converted) for report in reports] == [("train", 2, 0), ("valid", 1, 1)]
    assert read(out / "train.tsv") == f"{folder}\na.wav\t16000\nsub/b.flac\t9000\n"
    assert read(out / "train.wrd") == "hello there\nsecond line\n"
    assert read(out / "valid.tsv") == f"{out}/audio\nc.wav\t16000\n"
    assert check_manifest_dir(out) == []


def test_folder_unknown_utterance_id(folder, tmp_path):
    write_lines(folder.parent / "train.txt", ["a\tfine", "zzz\tno such audio"])
    with pytest.raises(DataError, match=rf"{folder.parent}/train.txt:2: no audio file for 'zzz' under {folder}"):
        convert("folder", folder, tmp_path / "out", transcripts={"train": folder.parent / "train.txt"})


def test_alphabet_drops_and_counts_or_stops_with_every_line(fleurs, tmp_path):
    english = "abcdefghijklmnopqrstuvwxyz"
    reports = convert("fleurs", fleurs, tmp_path / "drop", splits=["train"], alphabet=english)
    assert read(tmp_path / "drop" / "train.wrd") == "hola mundo\n"
    assert reports[0].dropped_unknown == [(f"{fleurs}/train.tsv:2", ["é"])]
    assert "dropped 1 with characters outside the alphabet" in reports[0].describe()
    with pytest.raises(DataError) as error:
        convert("fleurs", fleurs, tmp_path / "error", splits=["train"], alphabet=english, on_unknown="error")
    assert f"{fleurs}/train.tsv:2: characters 'é' not in the alphabet" in str(error.value)


def test_alphabet_can_be_a_dictionary_file(fleurs, tmp_path):
    convert("fleurs", fleurs, tmp_path / "first")
    alphabet = parse_alphabet(str(tmp_path / "first" / "dict.ltr.txt"))
    assert "|" in alphabet and "í" in alphabet
    reports = convert("fleurs", fleurs, tmp_path / "second", splits=["test"], alphabet=alphabet, write_dictionary=False)
    assert reports[0].kept == 1 and not reports[0].dropped_unknown
    assert not (tmp_path / "second" / "dict.ltr.txt").exists()
    assert parse_alphabet(SPANISH) == list(SPANISH)


def test_empty_transcripts_are_dropped_and_counted(fleurs, tmp_path):
    write_lines(fleurs / "train.tsv", ["1001\t1001.wav\tHola.\thola\th o l a |\t16000\tMALE",
                                       "1002\t1002.wav\t...\t...\t|\t8000\tMALE"])
    reports = convert("fleurs", fleurs, tmp_path / "out", splits=["train"])
    assert reports[0].kept == 1 and reports[0].dropped_empty == [f"{fleurs}/train.tsv:2"]


def test_a_split_with_nothing_left_is_an_error(fleurs, tmp_path):
    with pytest.raises(DataError, match="split train: no utterance left"):
        convert("fleurs", fleurs, tmp_path / "out", splits=["train"], alphabet="xyz")


def test_cli_manifest(fleurs, tmp_path, capsys):
    out = tmp_path / "cli"
    assert run_cli("data", "manifest", "fleurs", str(fleurs), "--out", str(out), "--quiet", "--splits", "train,dev",
                   "--alphabet", SPANISH) == 0
    printed = capsys.readouterr().out
    assert "train: 2 utterances (0 converted to 16 kHz wav)" in printed and "valid: 1 utterances" in printed
    assert sorted(path.name for path in out.iterdir()) == [
        "dict.ltr.txt", "train.ltr", "train.tsv", "train.wrd", "valid.ltr", "valid.tsv", "valid.wrd"]
    assert run_cli("data", "manifest", "mls", str(fleurs), "--out", str(out)) == 2
    assert "MLS transcript file not found" in capsys.readouterr().err


def test_symbolic_links_in_the_source_are_kept_as_given(fleurs, tmp_path):
    """Clusters often link corpora in from shared storage; the manifest keeps the linked path."""
    elsewhere = tmp_path / "shared_storage"
    (fleurs / "audio").rename(elsewhere)
    (fleurs / "audio").symlink_to(elsewhere)
    out = tmp_path / "out"
    convert("fleurs", fleurs, out, splits=["train"])
    assert read(out / "train.tsv").splitlines()[0] == f"{fleurs}/audio/train"
    assert check_manifest_dir(out) == []
