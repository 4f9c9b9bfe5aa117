"""A checkpoint imported from an HF folder (`fairseq-subnets import --format hf`) starts every
training mode of the plugin.

A `Wav2Vec2ForPreTraining` folder, made from a random TINY fairseq pretraining model, is imported
once and named as `model.w2v_path` by every shipped tiny entry config (found by a glob, so a new
technique's config is covered as soon as it ships), by a fixed mask and by the combinations of
techniques; an imported `Wav2Vec2ForCTC` folder is named as `+model.init_from`. Every XLS-R 300M
entry config, and a fixed mask on XLS-R's, names another imported pretraining model: XLS-R's
architecture (layer-norm feature extractor with conv biases, layers normalizing first) and
normalized input, which those configs' task expects, at the TINY size. A fine-tuning config takes
its encoder's size from the model at `w2v_path`, so the size is not what these configs are tested
for, and an XLS-R-sized model would take gigabytes per mode. Each run is built
in this process as fairseq-hydra-train builds it (the entry config composed through its
`hydra.searchpath`, then the task and the model through fairseq's entry points), and the built
encoder holds the source model's weights bit for bit: a transform's own parameters (scores, tuner
factors, masks) aside, and the weights a kept-only fixed mask prunes, which are zero. Building is
not training, so these tests start no fairseq command.
"""
import types
import warnings

import pytest
import torch

from combinations import COMBINATIONS, combination_arguments
from factory import TINY, random_encoder_masks
from fairseq_subnets import USER_DIR
from fairseq_subnets.component_names import PLUGIN_MULTILINGUAL_TASK
from fairseq_subnets.runner import CONFIG_DIR
from fairseq_subnets.techniques.extension import W2V_PREFIX
from test_bad_inputs_training import built_as_fairseq_hydra_train_builds
from test_hf_interop import SHAPES, dictionary_of, export, stock_state, write_checkpoint
from test_shipped_configs import ENTRY_CONFIGS, compose_with_choices

TINY_ENTRY_CONFIGS = sorted(path.stem for path in (CONFIG_DIR / "finetune").glob("*tiny.yaml"))
"""tiny.yaml and every technique's *_tiny.yaml."""
XLSR_ENTRY_CONFIGS = sorted(path.stem for path in (CONFIG_DIR / "finetune").glob("*xlsr_300m.yaml"))
"""xlsr_300m.yaml and every technique's *_xlsr_300m.yaml."""
TINY_ENCODER = SHAPES["tiny"][0]
XLSR_ARCHITECTURE_AT_TINY_SIZE = (TINY_ENCODER, True, True)
"""(encoder size, XLS-R's architecture, normalized input), as test_hf_interop.SHAPES holds them."""
LANGUAGES = ("es", "ca")
PRETRAINING_ONLY_MODULES = ("quantizer.", "project_q.", "final_proj.", "target_glu.")
"""What fairseq's fine-tuning encoder removes from a pretraining model (remove_pretraining_modules)."""
MODES = {**{name: (name, ()) for name in TINY_ENTRY_CONFIGS},
         "fixed_mask": ("tiny", ("+model.mask_path=<MASK>",)),
         **{name: combination_arguments(name, "<MASK>") for name in COMBINATIONS}}
"""Mode -> (entry config, overrides beyond the paths); <MASK> is a mask file of the TINY encoder."""
XLSR_MODES = {**{name: (name, ()) for name in XLSR_ENTRY_CONFIGS},
              "fixed_mask_xlsr_300m": ("xlsr_300m", ("+model.mask_path=<MASK>",))}
"""The same for the XLS-R 300M entry configs, whose source is `xlsr_sources`."""


def imported(folder, out):
    from fairseq_subnets.cli.main import main

    assert main(["import", str(folder), str(out), "--format", "hf"]) == 0
    return out


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """One imported pretraining checkpoint and one imported CTC checkpoint (each with the fairseq
    model its HF folder was exported from), a manifest folder per language and one for a single
    language (each with a dict.ltr.txt), and a mask file per language and one more for fixed masks."""
    root = tmp_path_factory.mktemp("hf_import_modes")
    write_folders_and_masks(root)
    (root / "ctc").mkdir()
    ctc_path, _ = write_checkpoint(root / "ctc", "tiny")
    export(ctc_path, root / "ctc" / "hf")
    (root / "ctc" / "imported").mkdir()
    return types.SimpleNamespace(
        root=root, **imported_pretraining(root, "tiny"),
        ctc=imported(root / "ctc" / "hf", root / "ctc" / "imported" / "ctc.pt"), ctc_state=stock_state(ctc_path))


@pytest.fixture(scope="module")
def xlsr_sources(tmp_path_factory):
    """As `sources` (no CTC model), with a pretraining model of XLS-R's architecture."""
    root = tmp_path_factory.mktemp("hf_import_xlsr_modes")
    write_folders_and_masks(root)
    return types.SimpleNamespace(root=root, **imported_pretraining(root, "xlsr_architecture",
                                                                   XLSR_ARCHITECTURE_AT_TINY_SIZE))


def write_folders_and_masks(root):
    """A manifest folder per language and one for a single language (each with a dict.ltr.txt),
    and a mask file of the TINY encoder per language and one more for fixed masks."""
    from fairseq_subnets.core.maskfile import save_mask_file

    for folder in (root / "single", *(root / "corpus" / language for language in LANGUAGES)):
        folder.mkdir(parents=True)
        dictionary_of().save(str(folder / "dict.ltr.txt"))
    for seed, name in enumerate(("fixed", *LANGUAGES)):
        save_mask_file(str(root / f"{name}.mask"), random_encoder_masks(0.5, seed=seed, **TINY))


def imported_pretraining(root, shape, settings=None) -> dict:
    """A random pretraining model of `shape` exported to HF and imported back: the imported
    checkpoint (`pretraining`) and the source model's state (`pretraining_state`)."""
    path, model = write_checkpoint(root, shape, pretraining=True, settings=settings)
    export(path, root / "hf_pretraining")
    return {"pretraining": imported(root / "hf_pretraining", root / "pretraining.pt"),
            "pretraining_state": model.state_dict()}


def run_arguments(config_name, overrides, sources, save_dir, data=None):
    """The fairseq-hydra-train overrides of a run of `config_name`: the paths (the task's data: `data`,
    else the manifest folders the task reads), and the languages and per-language masks where the
    composed config leaves them to the user."""
    from omegaconf import OmegaConf

    with warnings.catch_warnings():  # Hydra's note on the schema fairseq stores under the config's name
        warnings.simplefilter("ignore", UserWarning)
        cfg, _ = compose_with_choices(config_name)
    multilingual = cfg.task._name == PLUGIN_MULTILINGUAL_TASK
    arguments = [f"common.user_dir={USER_DIR}", f"checkpoint.save_dir={save_dir}",
                 f"model.w2v_path={sources.pretraining}",
                 f"task.data={data or (sources.root / 'corpus' if multilingual else sources.root / 'single')}",
                 *(override.replace("<MASK>", str(sources.root / "fixed.mask")) for override in overrides)]
    if multilingual and OmegaConf.is_missing(cfg.task, "languages"):
        arguments.append(f"task.languages=[{','.join(LANGUAGES)}]")
    if OmegaConf.is_missing(cfg.model, "language_mask_files"):
        arguments.append("model.language_mask_files=["
                         + ",".join(f"{language}:{sources.root / language}.mask" for language in LANGUAGES) + "]")
    return arguments


def built_run(config_name, arguments):
    built = {}
    stage, error = built_as_fairseq_hydra_train_builds(arguments, config_name, built)
    assert (stage, error) == (None, None), f"{config_name}: the {stage} was not built: {error!r}"
    return built["task"], built["model"]


def stored_base_weight(model, name):
    """The value `model` holds for the source's parameter or buffer `name` before any transform
    acts: a transformed weight's base weight (kept-only storage expanded, pruned entries zero), a
    transformed bias's stored original, else the tensor itself. Returns (value, the kept-only mask
    or None)."""
    from torch.nn.utils import parametrize

    from fairseq_subnets.core.transforms import base_weight, stack_of

    path, attribute = name.rsplit(".", 1)
    module = model.get_submodule(path)
    if not parametrize.is_parametrized(module, attribute):
        return getattr(module, attribute).detach(), None
    if attribute != "weight":  # a bias that follows its weight's adaptation (IA3, GLoRA, BitFit)
        return module.parametrizations[attribute].original.detach(), None
    fixed = stack_of(module).kept_only_mask()
    return base_weight(module), None if fixed is None else fixed.kept()


def assert_encoder_holds(model, source_state, source_prefix=""):
    """Every encoder tensor of `source_state` (keys under `source_prefix`), pretraining-only modules
    aside, is held by the model bit for bit (zero where a kept-only mask prunes it)."""
    names = [name[len(source_prefix):] for name in source_state
             if name.startswith(source_prefix) and not name[len(source_prefix):].startswith(PRETRAINING_ONLY_MODULES)]
    assert len(names) > 40  # the feature extractor, the encoder layers, the norms
    differing = []
    for name in names:
        source = source_state[source_prefix + name]
        held, kept = stored_base_weight(model, W2V_PREFIX + name)
        expected = source if kept is None else torch.where(kept, source, torch.zeros_like(source))
        if not torch.equal(held, expected):
            differing.append(name)
    assert differing == []


@pytest.mark.parametrize("modes, mode",
                         [("tiny", mode) for mode in MODES] + [("xlsr_300m", mode) for mode in XLSR_MODES])
def test_an_imported_pretraining_model_is_the_w2v_path_of_every_training_mode(modes, mode, request, tmp_path):
    config_name, overrides = (MODES if modes == "tiny" else XLSR_MODES)[mode]
    sources = request.getfixturevalue("sources" if modes == "tiny" else "xlsr_sources")
    _, model = built_run(config_name, run_arguments(config_name, overrides, sources, tmp_path / "run"))
    assert_encoder_holds(model, sources.pretraining_state)
    assert not (tmp_path / "run").exists()


def test_the_modes_cover_every_shipped_entry_config():
    """An entry config whose name the globs miss (neither tiny nor XLS-R sized) shows here."""
    assert set(TINY_ENTRY_CONFIGS) | set(XLSR_ENTRY_CONFIGS) == set(ENTRY_CONFIGS)
    assert {"tiny", "lora_tiny", "learned_masks_tiny", "lth_tiny", "pathways_tiny"} <= set(MODES)
    assert {"xlsr_300m", "lora_xlsr_300m", "learned_masks_xlsr_300m", "lth_xlsr_300m", "pathways_xlsr_300m"} <= set(
        XLSR_MODES)


@pytest.mark.parametrize("mode", ["tiny", "fixed_mask", "lora_tiny", "learned_masks_tiny"])
def test_an_imported_ctc_model_as_init_from_keeps_its_head_and_vocabulary(mode, sources, tmp_path):
    """The task reads the dict.ltr.txt the import wrote beside the checkpoint; the run keeps the
    imported output layer (its dictionary is the task's) and the encoder."""
    from fairseq_subnets.plugin.formats.checkpoints import load_fairseq_checkpoint

    config_name, overrides = MODES[mode]
    arguments = [*run_arguments(config_name, overrides, sources, tmp_path / "run", data=sources.ctc.parent),
                 f"+model.init_from={sources.ctc}"]
    task, model = built_run(config_name, arguments)
    imported_dictionary = load_fairseq_checkpoint(sources.ctc)["task_state"]["target_dictionary"]
    assert list(task.target_dictionary.symbols) == list(imported_dictionary.symbols) == list(dictionary_of().symbols)
    for name in ("w2v_encoder.proj.weight", "w2v_encoder.proj.bias"):
        assert torch.equal(model.get_parameter(name).detach(), sources.ctc_state[name])
    assert_encoder_holds(model, sources.ctc_state, source_prefix=W2V_PREFIX)
    # the two sources differ, so the encoder came from init_from, not from the w2v_path the run also names
    assert not torch.equal(sources.ctc_state[W2V_PREFIX + "encoder.layers.0.fc1.weight"],
                           sources.pretraining_state["encoder.layers.0.fc1.weight"])
