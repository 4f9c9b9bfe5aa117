"""`subnets_multilingual_finetuning` without training: bad options refused at setup with the
option or language named, dictionaries per language or their union, the language reaching
`net_input`, and the per-language / language-share metrics."""
import math

import pytest
import torch

from factory import LETTERS

SPANISH = LETTERS[:20]
CATALAN = LETTERS[5:25] + ["ç"]


@pytest.fixture
def data_root(tmp_path):
    from fairseq.data import Dictionary

    for language, symbols in (("es", SPANISH), ("ca", CATALAN)):
        dictionary = Dictionary()
        for symbol in symbols:
            dictionary.add_symbol(symbol)
        (tmp_path / language).mkdir()
        dictionary.save(str(tmp_path / language / "dict.ltr.txt"))
    return tmp_path


def setup(data_root, **options):
    from fairseq.tasks import setup_task
    from omegaconf import OmegaConf

    import fairseq_subnets.plugin  # noqa: F401  (registers the task)

    task = {"_name": "subnets_multilingual_finetuning", "data": str(data_root), "labels": "ltr",
            "languages": ["es", "ca"], **options}
    root = OmegaConf.create({"task": task, "common": {"tpu": False}, "dataset": {"train_subset": "train"},
                             "optimization": {"update_freq": [1]}})  # what the task's interpolations read
    return setup_task(root.task)


@pytest.mark.parametrize("options, message", [
    ({"languages": ["es", "ca", "ast"]}, "language 'ast': no manifest folder .*/ast"),
    ({"languages": []}, "task.languages is empty"),
    ({"languages": "es,es"}, "lists es more than once"),
    ({"language_sampling_alpha": -0.5}, "alpha=-0.5 is negative"),
    ({"decode_language": "ast"}, "task.decode_language=ast is not one of task.languages \\(es, ca\\)"),
    ({"output_layers": "both"}, "Invalid value 'both', expected one of \\[per_language, shared\\]"),
])
def test_bad_options_are_refused_at_setup_naming_them(data_root, options, message):
    with pytest.raises(Exception, match=message):
        setup(data_root, **options)


def test_a_language_without_a_dictionary_is_refused_by_name(data_root):
    (data_root / "ca" / "dict.ltr.txt").unlink()
    with pytest.raises(ValueError, match="language 'ca': dictionary .*ca/dict.ltr.txt not found"):
        setup(data_root)


def test_languages_given_comma_separated_as_fairseq_generate_passes_them(data_root):
    assert setup(data_root, languages="es, ca").languages == ["es", "ca"]


def test_each_language_has_its_own_dictionary_or_all_share_their_union(data_root):
    own = setup(data_root)
    assert own.output_layout() == (["es", "ca"], "per_language", [4 + len(SPANISH), 4 + len(CATALAN)])
    with own.using_language("ca"):
        assert own.target_dictionary.symbols[4:] == CATALAN
    assert own.target_dictionary.symbols[4:] == SPANISH  # the first language outside a batch
    union = setup(data_root, output_layers="shared")
    expected = SPANISH + [symbol for symbol in CATALAN if symbol not in SPANISH]
    assert union.output_layout() == (["es", "ca"], "shared", [4 + len(expected)])
    assert union.target_dictionary.symbols[4:] == expected
    assert setup(data_root, decode_language="ca").target_dictionary.symbols[4:] == CATALAN


class ListDataset(torch.utils.data.Dataset):
    """A language's split stand-in: items carry their id, the collater counts them."""

    def __init__(self, size):
        self.sizes = torch.arange(size).numpy() + 1

    def __len__(self):
        return len(self.sizes)

    def __getitem__(self, index):
        return {"id": index}

    def collater(self, samples):
        return {"id": torch.tensor([s["id"] for s in samples]), "net_input": {"source": None}}


def test_batches_name_their_language_in_net_input_and_mixed_batches_are_refused():
    from fairseq_subnets.plugin.components.multilingual_data import MixedLanguageBatchError, MonolingualBatchDataset

    dataset = MonolingualBatchDataset({"es": ListDataset(3), "ca": ListDataset(2)})
    assert len(dataset) == 5 and dataset.language_sizes() == {"es": 3, "ca": 2}
    batch = dataset.collater([dataset[3], dataset[4]])
    assert batch["net_input"]["language"] == "ca" and batch["id"].tolist() == [0, 1]
    assert dataset.collater([dataset[0]])["net_input"]["language"] == "es"
    with pytest.raises(MixedLanguageBatchError, match="mixes languages"):
        dataset.collater([dataset[2], dataset[3]])


def reduced(logging_outputs, languages=("es", "ca")):
    from fairseq.logging import metrics

    from fairseq_subnets.plugin.components.tasks import log_language_shares, log_per_language_metrics

    with metrics.aggregate() as aggregator:
        log_language_shares(logging_outputs, list(languages))
        log_per_language_metrics(logging_outputs, list(languages))
    return aggregator.get_smoothed_values()


def test_language_shares_and_the_mixed_update_counter():
    monolingual = reduced([{"_batches_es": 2, "_batches_ca": 0}])
    assert monolingual["share_es"] == 1 and monolingual["share_ca"] == 0
    assert monolingual["mixed_language_updates"] == 0
    mixed = reduced([{"_batches_es": 1, "_batches_ca": 1}])  # ranks disagreeing would look like this
    assert mixed["share_es"] == 0.5 and mixed["mixed_language_updates"] == 1


def test_validation_metrics_per_language_and_their_unweighted_mean():
    from fairseq_subnets.plugin.components.tasks import add_per_language_counts

    outputs = []
    for language, loss, size, errors, length in (("es", 20.0, 4, 10, 100), ("ca", 30.0, 2, 30, 50)):
        log = {"loss": loss, "sample_size": size, "c_errors": errors, "c_total": length, "w_errors": 1, "w_total": 4}
        add_per_language_counts(log, language, ["es", "ca"], ("loss", "sample_size", "c_errors", "c_total",
                                                              "w_errors", "w_total"))
        outputs.append(log)
    stats = reduced(outputs)
    assert stats["cer_es"] == 10.0 and stats["cer_ca"] == 60.0
    assert stats["cer_language_mean"] == 35.0  # the pooled CER would be 40 / 150 = 26.7
    assert stats["loss_es"] == pytest.approx(20 / 4 / math.log(2), abs=1e-3)
    assert stats["loss_language_mean"] == pytest.approx((20 / 4 + 30 / 2) / 2 / math.log(2), abs=1e-3)
    assert stats["wer_ca"] == 25.0


def test_a_broken_manifest_is_refused_naming_its_language_file_and_line(data_root):
    import numpy as np
    import soundfile

    (data_root / "audio").mkdir()
    soundfile.write(data_root / "audio" / "clip.wav", np.zeros(1600, dtype=np.int16), 16000)
    (data_root / "es" / "valid.tsv").write_text(f"{data_root / 'audio'}\nclip.wav\t1600\n")
    (data_root / "es" / "valid.ltr").write_text("a b |\n")
    (data_root / "es" / "valid.wrd").write_text("ab\n")
    (data_root / "ca" / "valid.tsv").write_text(f"{data_root / 'no-audio-here'}\nclip.wav\t1600\n")
    task = setup(data_root)
    with pytest.raises(ValueError, match=r"language 'ca': split 'valid' of .*/ca has \d+ problem\(s\)(.|\n)*"
                                         r"valid\.tsv:1: audio root folder .*no-audio-here does not exist"):
        task.load_dataset("valid")


@pytest.mark.parametrize("name, base_max_tokens", [("multilingual_tiny", 400000), ("multilingual_xlsr_300m", 1280000)])
def test_shipped_configs_are_their_single_language_config_plus_the_multilingual_task(name, base_max_tokens):
    """Composed as fairseq-hydra-train composes them (fairseq's schema under the config's name,
    Hydra 1.1 semantics), so the single-language values survive the schema's defaults."""
    from fairseq.dataclass.initialize import hydra_init
    from hydra import compose, initialize_config_dir

    from fairseq_subnets import USER_DIR

    hydra_init(name)
    with initialize_config_dir(config_dir=f"{USER_DIR}/config/finetune", version_base="1.1"):
        cfg = compose(config_name=name, overrides=["task.languages=[es,ca]"])
    assert cfg.task._name == "subnets_multilingual_finetuning" and list(cfg.task.languages) == ["es", "ca"]
    assert cfg.task.language_sampling_alpha == 0.5 and cfg.task.output_layers == "per_language"
    assert cfg.checkpoint.best_checkpoint_metric == "cer_language_mean"
    assert cfg.dataset.max_tokens == base_max_tokens and cfg.model._name == "subnets_wav2vec_ctc"
    # an update leaves the other languages' heads as they are: fp16 only without fairseq's fp32 copies
    assert cfg.common.get("memory_efficient_fp16", False) == bool(cfg.common.fp16)
