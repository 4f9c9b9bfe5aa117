"""`adapters export --format peft` (fairseq_subnets.interop.peft) against HF PEFT itself.

For every method with a PEFT form, a tiny model with that tuner on all six kinds of matrix (every
parameter moved off its initial value, AdaLoRA with some triplets dropped by its budget) is saved
as a run's checkpoint and as an adapter file. Its backbone, without the tuner and with another
output layer, goes to HF with `export --format hf`; the adapter goes to PEFT with `adapters export
--format peft`; `PeftModel.from_pretrained` loads the adapter onto the backbone offline, and its
logits must be within 1e-5 of those of the merged run's HF export (`export --format hf` of the
run's checkpoint). The refusals are in tests/test_bad_inputs_peft.py.

PEFT and transformers are test dependencies; checked against PEFT 0.21.0 (tests/test_tuners_peft.py
pins it).
"""
import json
import types

import pytest
import torch

from test_hf_interop import SHAPES, TUNER_SETTINGS, audio, dictionary_of, export, model_config, perturbed

TOLERANCE = 1e-5
pytestmark = pytest.mark.filterwarnings("ignore:The following rank_pattern keys did not match")
"""PEFT 0.21 warns so on loading every AdaLoRA adapter, its own saves included, and then applies
the pattern (AdaLoRA resizes its matrices by it)."""
EXPORTED_METHODS = ("lora", "dora", "ia3", "vera", "adalora", "glora")
HF_MATRICES = ("attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.out_proj",
               "feed_forward.intermediate_dense", "feed_forward.output_dense")
"""HF's names of the six matrices a tuner may adapt in each encoder layer."""


def run_config(directory, settings):
    """A tiny CTC model's fairseq config with `settings` (model.tuner_...) on top."""
    from fairseq.dataclass.configs import FairseqConfig
    from omegaconf import OmegaConf

    cfg = OmegaConf.structured(FairseqConfig)
    cfg.model = OmegaConf.merge(model_config(*SHAPES["tiny"]), settings)
    cfg.task = {"_name": "subnets_audio_finetuning", "data": str(directory), "labels": "ltr", "normalize": False}
    return cfg


def build(cfg, seed):
    from fairseq_subnets.plugin.components.models import SubnetsWav2VecCtc

    torch.manual_seed(seed)
    model = SubnetsWav2VecCtc.build_model(cfg.model, types.SimpleNamespace(target_dictionary=dictionary_of()))
    return perturbed(model, seed)


def save(cfg, model, path):
    from fairseq_subnets.plugin.formats.checkpoints import trainer_checkpoint

    torch.save(trainer_checkpoint(cfg, model.state_dict(), "SubnetsCtcCriterion",
                                  task_state={"target_dictionary": dictionary_of()}), path)


def drop_some_triplets(model):
    """Keeps a different subset of each AdaLoRA matrix's triplets (at least one), as its budget would."""
    from fairseq_subnets.techniques.tuners.adalora import SvdDelta

    generator = torch.Generator().manual_seed(7)
    for delta in (module for module in model.modules() if isinstance(module, SvdDelta)):
        kept = torch.rand(delta.kept.shape, generator=generator) < 0.6
        kept[0] = True
        delta.keep(kept)


def write_run(directory, method, layers="all"):
    """The run's checkpoint (tuned.pt), its adapter file and its backbone as a CTC checkpoint
    without the tuner and with another output layer (backbone.pt); returns (cfg, run's model)."""
    from fairseq_subnets.cli.main import main
    from fairseq_subnets.plugin.formats.adapters import backbone_tensors
    from fairseq_subnets.techniques.extension import W2V_PREFIX

    cfg = run_config(directory, {"tuner": method, "tuner_targets": "all", "tuner_layers": layers,
                                 **TUNER_SETTINGS.get(method, {})})
    model = build(cfg, seed=0)
    if method == "adalora":
        drop_some_triplets(model)
    save(cfg, model, directory / "tuned.pt")
    assert main(["adapters", "save", str(directory / "tuned.pt"), "--out", str(directory / "run.adapter")]) == 0
    backbone_cfg = run_config(directory, {})
    backbone = build(backbone_cfg, seed=1)
    state = backbone.state_dict()
    state.update({W2V_PREFIX + name: tensor for name, tensor in backbone_tensors(model.state_dict()).items()})
    backbone.load_state_dict(state)
    save(backbone_cfg, backbone, directory / "backbone.pt")
    return cfg, model


def logits_of(folder, adapter=None, head_of=None):
    """Logits of the HF model in `folder` on the test utterance: with the PEFT adapter in
    `adapter` loaded onto it, or with the output layer of the HF model in `head_of`."""
    from peft import PeftModel
    from transformers import Wav2Vec2ForCTC

    model = Wav2Vec2ForCTC.from_pretrained(folder)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    if head_of is not None:
        model.lm_head.load_state_dict(Wav2Vec2ForCTC.from_pretrained(head_of).lm_head.state_dict())
    with torch.no_grad():
        return model.eval()(audio(False)).logits


@pytest.fixture(scope="module", params=[*EXPORTED_METHODS, "lora-one-layer"])
def exported(request, tmp_path_factory):
    """(method, layers, adapter_config.json, PEFT logits, merged logits, logits of the backbone
    with the run's output layer)."""
    from fairseq_subnets.cli.main import main

    method, layers = ("lora", "1") if request.param == "lora-one-layer" else (request.param, "all")
    directory = tmp_path_factory.mktemp(request.param)
    write_run(directory, method, layers)
    export(directory / "backbone.pt", directory / "hf-backbone")
    export(directory / "tuned.pt", directory / "hf-merged")
    assert main(["adapters", "export", "--format", "peft", str(directory / "run.adapter"),
                 "--out", str(directory / "peft")]) == 0
    config = json.loads((directory / "peft" / "adapter_config.json").read_text())
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        return (method, layers, config, logits_of(directory / "hf-backbone", directory / "peft"),
                logits_of(directory / "hf-merged"),
                logits_of(directory / "hf-backbone", head_of=directory / "hf-merged"))


def test_peft_on_the_hf_backbone_computes_what_the_merged_hf_export_computes(exported):
    method, _, _, peft_logits, merged_logits, untuned_logits = exported
    assert peft_logits.shape == merged_logits.shape
    assert (untuned_logits - merged_logits).abs().max() > 100 * TOLERANCE  # the tuner changes the model
    assert (peft_logits - merged_logits).abs().max() <= TOLERANCE, method


def test_the_adapter_targets_hfs_matrices_of_the_adapted_layers(exported):
    method, layers, config, *_ = exported
    adapted_layers = [0, 1] if layers == "all" else [int(layers)]
    assert sorted(config["target_modules"]) == sorted(f"wav2vec2.encoder.layers.{layer}.{matrix}"
                                                      for layer in adapted_layers for matrix in HF_MATRICES)
    assert config["modules_to_save"] == ["lm_head"]
    assert config["peft_type"] == {"dora": "LORA"}.get(method, method.upper())


def test_adalora_keeps_the_runs_triplets_as_its_rank_pattern_and_scales_as_ours(tmp_path, monkeypatch):
    """Only the kept triplets are stored, and PEFT's delta of each matrix is ours: its divisor r +
    1e-5 (where ours is r) is made up for in lora_alpha, a difference of about 1e-6 relative that
    the logits alone would not show."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import Wav2Vec2ForCTC

    from fairseq_subnets.cli.main import main

    _, model = write_run(tmp_path, "adalora")
    export(tmp_path / "backbone.pt", tmp_path / "hf-backbone")
    assert main(["adapters", "export", "--format", "peft", str(tmp_path / "run.adapter"), "--out",
                 str(tmp_path / "peft")]) == 0
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    weights = load_file(tmp_path / "peft" / "adapter_model.safetensors")
    ours = model.w2v_encoder.w2v_model.encoder.layers[1].fc2.parametrizations.weight[0].adalora["tuner"]
    pattern = config["rank_pattern"]["wav2vec2.encoder.layers.1.feed_forward.output_dense.lora_E"]
    assert pattern == ours.kept.tolist()
    assert not all(pattern)  # the budget dropped some
    prefix = "base_model.model.wav2vec2.encoder.layers.1.feed_forward.output_dense."
    assert weights[prefix + "lora_A"].shape[0] == weights[prefix + "lora_E"].shape[0] == sum(pattern)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    peft_model = PeftModel.from_pretrained(Wav2Vec2ForCTC.from_pretrained(tmp_path / "hf-backbone"), tmp_path / "peft")
    theirs = peft_model.base_model.model.wav2vec2.encoder.layers[1].feed_forward.output_dense
    with torch.no_grad():
        their_delta, our_delta = theirs.get_delta_weight("default").double(), ours.delta().double()
    assert abs(float(their_delta.norm() / our_delta.norm()) - 1) < 1e-7
    torch.testing.assert_close(their_delta, our_delta, rtol=1e-6, atol=1e-9)


def test_the_folder_follows_the_umask_and_is_written_whole(tmp_path):
    from fairseq_subnets.cli.main import main
    from test_output_permissions import mode, process_umask

    write_run(tmp_path, "ia3")
    with process_umask(0o027):
        assert main(["adapters", "export", "--format", "peft", str(tmp_path / "run.adapter"), "--out",
                     str(tmp_path / "peft")]) == 0
    assert oct(mode(tmp_path / "peft")) == oct(0o750)
    assert {path.name: oct(mode(path)) for path in (tmp_path / "peft").iterdir()} == {
        "adapter_config.json": oct(0o640), "adapter_model.safetensors": oct(0o640)}
    assert not [path.name for path in tmp_path.iterdir() if path.name.startswith(".")]  # no partial folder left


def test_every_tuner_declares_its_peft_form_or_why_it_has_none():
    """Exactly one of the two, in its own folder's `TUNER`: interop names no method, so a tuner that
    declared neither could be neither exported nor refused with a reason."""
    from fairseq_subnets.techniques.tuners import TUNERS

    declared = {method: (tuner.peft_form, tuner.no_peft_form) for method, tuner in TUNERS.items()}
    assert sorted(method for method, (form, _) in declared.items() if form is not None) == sorted(EXPORTED_METHODS)
    for method, (form, reason) in declared.items():
        if form is not None:
            assert callable(form) and reason is None, method
        else:
            assert isinstance(reason, str) and reason.strip() and "\n" not in reason, method


def toy_form(matrices, tuner):
    """A toy tuner's own PEFT form: one made-up PEFT type keeping each matrix's down-projection."""
    from fairseq_subnets.techniques.tuners.peft_form import saved

    tensors = {}
    for matrix in matrices:
        tensors.update(saved(matrix.module, {"toy_A": matrix.state["lora_A"]}))
    return {"peft_type": "TOY", "r": tuner.r}, tensors


def test_a_new_tuner_brings_its_own_peft_form_with_no_edit_to_interop(tmp_path, monkeypatch):
    """A toy method registered in this test (LoRA's delta under a transform kind and a method name
    of its own, with a form of its own) is saved as an adapter file and exported by the real
    command, through its form."""
    from dataclasses import dataclass

    from factory import write_run_checkpoint
    from safetensors.torch import load_file

    from fairseq_subnets.cli.main import main
    from fairseq_subnets.core.transforms import TRANSFORM_KINDS, add_transform
    from fairseq_subnets.plugin.formats.adapters import read_adapter_file
    from fairseq_subnets.techniques.tuners import TUNER_KINDS, TUNERS, Tuner, target_modules
    from fairseq_subnets.techniques.tuners.lora import LoraConfig, LoraDelta

    @dataclass(frozen=True)
    class ToyConfig(LoraConfig):
        method = "toy"

    class ToyDelta(LoraDelta):
        kind = "toy"

    def inject_toy(root, config, prefix="", name="default"):
        targets = target_modules(root, config, prefix)
        for _, module in targets:
            add_transform(module, name, ToyDelta.create(tuple(module.weight.shape), config.r, config.alpha))
        return [weight for weight, _ in targets]

    monkeypatch.setitem(TRANSFORM_KINDS, "toy", ToyDelta)
    monkeypatch.setitem(TUNER_KINDS, "toy", "toy")
    monkeypatch.setitem(TUNERS, "toy", Tuner(ToyConfig, inject_toy, peft_form=toy_form))
    write_run_checkpoint(tmp_path / "toy.pt", tuner="toy", tuner_targets="q", tuner_layers="1", tuner_r=4)
    assert main(["adapters", "save", str(tmp_path / "toy.pt"), "--out", str(tmp_path / "toy.adapter")]) == 0
    assert main(["adapters", "export", "--format", "peft", str(tmp_path / "toy.adapter"), "--out",
                 str(tmp_path / "peft")]) == 0
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    module = "wav2vec2.encoder.layers.1.attention.q_proj"
    assert (config["peft_type"], config["r"], config["target_modules"]) == ("TOY", 4, [module])
    weights = load_file(tmp_path / "peft" / "adapter_model.safetensors")
    assert sorted(key for key in weights if not key.startswith("base_model.model.lm_head.")) == [
        f"base_model.model.{module}.toy_A"]
    down = next(tensor for key, tensor in read_adapter_file(str(tmp_path / "toy.adapter")).tensors.items()
                if key.endswith(".toy.tuner.lora_A"))
    assert torch.equal(weights[f"base_model.model.{module}.toy_A"], down)


@pytest.mark.slow
def test_importing_the_peft_export_imports_neither_peft_nor_transformers(tmp_path):
    """In a fresh interpreter holding only fairseq's commands' modules (the modules import fairseq:
    forked from the suite's fork server, which paid its import)."""
    import sys

    from fairseq_subnets.runner import run_logged

    script = ("import sys, fairseq_subnets.interop.peft, fairseq_subnets.cli.adapters\n"
              "print(sorted(name for name in sys.modules if name.split('.')[0] in ('transformers', 'peft')))")
    assert run_logged([sys.executable, "-c", script], tmp_path / "imports.log").strip().splitlines()[-1] == "[]"
