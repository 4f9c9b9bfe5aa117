"""Tuners on `subnets_wav2vec_ctc` from its config (`+model.tuner=...`): the shipped configs
compose into the method's settings over the base config; the model trains only the tuner and the
output layer; a model rebuilt from the recorded plan takes the checkpoint's state; the task runs
AdaLoRA's allocator after each optimizer step; bad settings fail naming the config key."""
import importlib
import sys
import types
from dataclasses import fields as dataclass_fields
from typing import Optional

import pytest
import torch

from factory import TINY
from fairseq_subnets.techniques.tuners import TUNERS, tuner_parameters
from fairseq_subnets.techniques.tuners.adalora import svd_deltas
from fairseq_subnets.plugin.components.errors import PluginInputError
from fairseq_subnets.plugin.components.models import W2V_PREFIX, SubnetsWav2VecCtc
from fairseq_subnets.plugin.components.tasks import SubnetsAudioFinetuningTask
from fairseq_subnets.benchmarks.untrained import CtcModelSize, ctc_model_config

SIZE = CtcModelSize(vocab=32, **TINY)
OUTPUT_LAYER = {"w2v_encoder.proj.weight", "w2v_encoder.proj.bias"}


def build(cfg, seed=0):
    torch.manual_seed(seed)
    return SubnetsWav2VecCtc.build_model(cfg, types.SimpleNamespace(target_dictionary=range(SIZE.vocab)))


def tuner_model_config(**fields):
    cfg = ctc_model_config(SIZE)
    for key, value in fields.items():
        cfg[key] = value
    return cfg


def compose(name):
    from fairseq.dataclass.initialize import hydra_init
    from hydra import compose as hydra_compose, initialize_config_dir

    from fairseq_subnets import USER_DIR

    hydra_init(name)
    with initialize_config_dir(config_dir=f"{USER_DIR}/config/finetune", version_base="1.1"):
        return hydra_compose(config_name=name)


@pytest.mark.parametrize("scale, lr, max_update, max_tokens", [("tiny", 0.005, 600, 400000),
                                                                ("xlsr_300m", 0.001, 20000, 1280000)])
@pytest.mark.parametrize("method", list(TUNERS))
def test_each_shipped_tuner_config_is_its_base_config_with_the_methods_settings(method, scale, lr, max_update,
                                                                                 max_tokens):
    from fairseq_subnets.techniques.tuners import tuner_config_of

    cfg = compose(f"{method}_{scale}")
    assert cfg.model._name == "subnets_wav2vec_ctc" and cfg.model.tuner == method
    assert cfg.model.freeze_finetune_updates == 0
    assert list(cfg.optimization.lr) == [lr] and cfg.optimization.max_update == max_update
    assert cfg.dataset.max_tokens == max_tokens and cfg.task._name == "subnets_audio_finetuning"
    config = tuner_config_of(cfg.model)
    assert config.method == method
    if method == "adalora":
        assert config.total_updates == max_update
        assert config.warmup_updates == max_update // 10 and config.final_updates == max_update * 3 // 10
    if method in ("lora", "alpha_lora", "adalora", "dora", "vera"):
        assert config.targets == "q,v"
    if method == "vera":
        assert (config.r, config.d_initial, config.projection_seed) == (256, 0.1, 0)


@pytest.mark.parametrize("method", list(TUNERS))
def test_the_model_trains_only_its_tuner_and_output_layer_and_rebuilds_from_its_plan(method):
    extra = {"tuner_total_updates": 100} if method == "adalora" else {}
    cfg = tuner_model_config(tuner=method, **extra)
    model = build(cfg)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(tuner_parameters(model)) | OUTPUT_LAYER
    assert model.w2v_encoder.freeze_finetune_updates == 0
    with torch.no_grad():
        for parameter in tuner_parameters(model).values():
            parameter.add_(0.1)
    rebuilt = build(cfg, seed=7)  # a resumed run or fairseq-generate: built from the recorded plan
    rebuilt.load_state_dict(model.state_dict())
    source = torch.randn(1, 4000, generator=torch.Generator().manual_seed(0))
    model.eval(), rebuilt.eval()
    with torch.no_grad():
        assert torch.equal(model(source=source, padding_mask=None)["encoder_out"],
                           rebuilt(source=source, padding_mask=None)["encoder_out"])


def test_the_task_runs_the_adalora_allocator_after_each_optimizer_step():
    model = build(tuner_model_config(tuner="adalora", tuner_total_updates=10, tuner_init_r=4, tuner_target_r=2))
    deltas = svd_deltas(model, W2V_PREFIX)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = types.SimpleNamespace(step=lambda: None)
    task = SubnetsAudioFinetuningTask.__new__(SubnetsAudioFinetuningTask)
    for update in range(10):
        for p in parameters:
            p.grad = torch.randn_like(p)
        with torch.no_grad():
            for delta in deltas.values():
                delta.lora_E.add_(0.1)
        task.optimizer_step(optimizer, model, update)
    # the final budget, target_r x matrices, shared out by importance (not 2 per matrix)
    assert sum(delta.rank() for delta in deltas.values()) == 2 * len(deltas)
    assert all(int((delta.lora_E != 0).sum()) == delta.rank() for delta in deltas.values())
    assert all(delta.lora_E_sensitivity.abs().sum() > 0 for delta in deltas.values())


BAD_SETTINGS = [
    ({"tuner": "prefix_tuning"}, r"model.tuner: unknown method .prefix_tuning. \(known: lora, alpha_lora"),
    ({"tuner": "lora", "tuner_r": 0}, r"model.tuner_r: a rank is an integer >= 1 \(got 0\)"),
    ({"tuner": "lora", "tuner_init_r": 4}, "model.tuner_init_r is an option of adalora; model.tuner=lora does not"),
    ({"tuner": "lora", "tuner_alpha": 0.0}, r"^model.tuner_alpha: must be > 0 \(got 0.0\)$"),
    ({"tuner": "adalora", "tuner_total_updates": 10, "tuner_beta1": 1.0},
     r"^model.tuner_beta1: must be in \(0, 1\) \(got 1.0\)$"),
    ({"tuner": "glora", "tuner_r": 65}, r"^model.tuner_r: 65 is above the rank 64 of encoder.layers.0.self_attn.q_proj"),
    ({"tuner": "adalora"}, r"model.tuner_total_updates: required: the updates of the budget schedule"),
    ({"tuner": "s2lora", "tuner_layers": "0-5"}, "model.tuner_layers: layer 2 is selected but the model has 2"),
    ({"tuner": "ia3", "tuner_targets": "fc3"}, "model.tuner_targets"),
    ({"tuner": "bitfit", "freeze_encoder_epochs": 1},
     "model.freeze_encoder_epochs=1 with model.tuner=bitfit: a frozen epoch runs the encoder without gradients, "
     "so the tuner would not learn"),
]


@pytest.mark.parametrize("fields, message", BAD_SETTINGS, ids=[m.split(":")[0][:40] for _, m in BAD_SETTINGS])
def test_bad_tuner_settings_fail_naming_the_config_key(fields, message):
    with pytest.raises(PluginInputError, match=message):
        build(tuner_model_config(**fields))


def test_an_adalora_schedule_longer_than_the_run_is_refused_before_training_naming_both_keys():
    from fairseq_subnets.techniques.extension import RunSettings

    model = build(tuner_model_config(tuner="adalora", tuner_total_updates=12))
    model.prepare_run(RunSettings(None, 12, None))  # ends with the run
    model.prepare_run(RunSettings(None, 0, None))  # fairseq's 0: no limit
    with pytest.raises(PluginInputError, match=r"^model.tuner_total_updates: 12 is above optimization.max_update=8: "
                                               r"the rank budget would never shrink to target_r"):
        model.prepare_run(RunSettings(None, 8, None))


KEYS_OF_0_4 = {"tuner", "tuner_targets", "tuner_layers", "tuner_r", "tuner_alpha", "tuner_init_r", "tuner_target_r",
               "tuner_total_updates", "tuner_warmup_updates", "tuner_final_updates", "tuner_interval", "tuner_beta1",
               "tuner_beta2", "tuner_orthogonality_weight", "tuner_sparsity_weight", "tuner_factor_weight"}
"""The tuner keys 0.4 declared by hand: shipped configs and 0.4 checkpoints use them."""


def test_the_flat_tuner_keys_are_generated_from_the_methods_options_without_defaults_of_their_own():
    from fairseq_subnets.techniques.tuners.extension import TunerModelConfig

    flat = {declared.name: declared for declared in dataclass_fields(TunerModelConfig)}
    options = {declared.name for tuner in TUNERS.values() for declared in dataclass_fields(tuner.config)}
    assert set(flat) == {"tuner"} | {f"tuner_{name}" for name in options}
    assert set(flat) >= KEYS_OF_0_4
    assert all(declared.default is None for declared in flat.values())
    assert flat["tuner_r"].metadata["help"] == (
        "rank of the low-rank factors (default: lora 8, alpha_lora 8); rank of the factor pairs of A, B and C "
        "(default: glora 8); rank of the shared factors (default: s2lora 8); rank of the low-rank factors giving "
        "each row's direction (default: dora 8); rank of the shared random bases (VeRA's r may exceed a matrix's "
        "sides: only the vector d grows with it) (default: vera 256). Unset: the method's default")
    assert "(default: adalora required)" in flat["tuner_total_updates"].metadata["help"]


TOY_METHOD = """
from dataclasses import dataclass

from ..base import Tuner, TunerConfig, option


@dataclass(frozen=True)
class ToyConfig(TunerConfig):
    method = "toy"
    targets: str = "fc1"
    strength: float = option(0.5, "how hard the toy pushes")


TUNER = Tuner(ToyConfig, lambda root, config, prefix, name: [])
"""


def test_a_new_method_folder_brings_its_option_key_and_help_with_no_other_edit(tmp_path, monkeypatch):
    """A toy method's folder (placed on the package's path, as if it were added to the source
    tree) registered by its line in METHODS: its option becomes a flat key with its help."""
    import fairseq_subnets.techniques.tuners as package
    from fairseq_subnets.techniques.tuners.extension import tuner_option_fields
    from fairseq_subnets.techniques.tuners.registry import METHODS, load_tuners

    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "__init__.py").write_text(TOY_METHOD)
    monkeypatch.setattr(package, "__path__", [*package.__path__, str(tmp_path)])
    importlib.invalidate_caches()
    try:
        tuners = load_tuners(METHODS + ("toy",))
    finally:
        sys.modules.pop(f"{package.__name__}.toy", None)
    flat = {name: (kind, declared) for name, kind, declared in tuner_option_fields(tuners)}
    assert set(flat) == {"tuner_strength"} | {name for name, _, _ in tuner_option_fields(TUNERS)}
    kind, declared = flat["tuner_strength"]
    assert kind == Optional[float] and declared.default is None
    assert declared.metadata["help"] == "how hard the toy pushes (default: toy 0.5). Unset: the method's default"
    assert ", toy fc1). Unset" in flat["tuner_targets"][1].metadata["help"]


def test_options_of_one_name_must_agree_on_their_type():
    from dataclasses import dataclass

    from fairseq_subnets.techniques.tuners.base import Tuner, TunerConfig, option
    from fairseq_subnets.techniques.tuners.extension import tuner_option_fields

    @dataclass(frozen=True)
    class TextRankConfig(TunerConfig):
        method = "text_rank"
        r: str = option("8", "a rank written as text")

    with pytest.raises(TypeError, match="tuner option 'r' is declared with different types by lora, alpha_lora, "
                                        "glora, s2lora, .*text_rank"):
        tuner_option_fields({**TUNERS, "text_rank": Tuner(TextRankConfig, None)})
