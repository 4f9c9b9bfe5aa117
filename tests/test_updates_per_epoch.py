"""`plugin.tools.epochs.updates_per_epoch`: the update count of an epoch from fairseq's own batching, and
the caller's logging left as it was."""
import logging

import numpy as np
import soundfile


def write_manifest_folder(folder, lengths):
    """A train split of silent utterances of `lengths` samples, with transcripts and a dictionary."""
    from fairseq_subnets.data.manifest import ManifestEntry, write_letter_dictionary, write_split

    entries = []
    for index, length in enumerate(lengths):
        path = folder / "audio" / f"{index}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(str(path), np.zeros(length, dtype=np.int16), 16000)
        entries.append(ManifestEntry(path, length, "a b"))
    write_split(folder, "train", entries)
    write_letter_dictionary(folder, {"train": ["a b"] * len(entries)})


def test_an_epoch_of_batches_under_max_tokens_and_the_fairseq_logger_keeps_its_level(tmp_path):
    from fairseq_subnets.plugin.tools.epochs import updates_per_epoch

    write_manifest_folder(tmp_path, [1600] * 6)
    fairseq_logger = logging.getLogger("fairseq")
    fairseq_logger.setLevel(logging.INFO)
    assert updates_per_epoch(tmp_path, max_tokens=3200) == 3  # two utterances per batch
    assert updates_per_epoch(tmp_path, max_tokens=3200, update_freq=2) == 2
    assert fairseq_logger.level == logging.INFO
