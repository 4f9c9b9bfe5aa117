"""Iterative pruning on a tiny `subnets_wav2vec_ctc` model in-process (the iterative_pruning technique):
bad settings are refused naming the model config key before anything is built, the events of an
LTH schedule driven through the task's hook, the group-lasso term the criterion sees, a checkpoint
sparser than the target refused when it is loaded, and a decoded checkpoint needing no schedule."""
import types

import pytest
import torch
from omegaconf import open_dict

from factory import TINY


def model_config(**overrides):
    from fairseq_subnets.benchmarks.untrained import CtcModelSize, ctc_model_config

    cfg = ctc_model_config(CtcModelSize(vocab=32, **TINY))
    with open_dict(cfg):
        for key, value in overrides.items():
            cfg[key] = value
    return cfg


def build(**overrides):
    from fairseq_subnets.plugin.components.models import SubnetsWav2VecCtc

    torch.manual_seed(0)
    return SubnetsWav2VecCtc.build_model(model_config(**overrides), types.SimpleNamespace(target_dictionary=range(32)))


SCHEDULE = dict(pruning_interval=2, pruning_fraction=0.5, pruning_target_sparsity=0.7)


@pytest.mark.parametrize("overrides, message", [
    (dict(pruning_interval=2), "model.pruning_interval needs model.pruning_target_sparsity"),
    (dict(pruning_target_sparsity=0.5), "model.pruning_target_sparsity needs model.pruning_interval"),
    ({**SCHEDULE, "pruning_interval": 0}, "model.pruning_interval=0: prune every T >= 1 updates"),
    ({**SCHEDULE, "pruning_fraction": 1.2}, "model.pruning_fraction=1.2: the share of the remaining weights"),
    ({**SCHEDULE, "pruning_target_sparsity": 1.0}, "model.pruning_target_sparsity=1.0: lies strictly between"),
    ({**SCHEDULE, "pruning_criterion": "l0"}, "model.pruning_criterion=l0: choose one of magnitude, block"),
    ({**SCHEDULE, "pruning_scope": "model"}, "model.pruning_scope=model: choose one of layer, global"),
    ({**SCHEDULE, "pruning_block": "8"}, "model.pruning_block: block: expected INPUTSxROWS"),
    ({**SCHEDULE, "pruning_targets": "ffm"}, "model.pruning_targets: unknown module kind 'ffm'"),
    ({**SCHEDULE, "pruning_rewind_update": 2}, r"model.pruning_rewind_update=2: the rewind point is taken before the "
     r"first pruning event, at an update in \[0, model.pruning_interval=2\)"),
    (dict(group_lasso_strength=-1.0), "model.group_lasso_strength=-1.0: must be >= 0"),
    (dict(group_lasso_strength=0.1, group_lasso_lambda="adaptive"), "model.group_lasso_lambda=adaptive: choose one "
     "of reference, current, constant"),
    ({**SCHEDULE, "mask_path": "a.mask"}, "model.pruning_interval with model.mask_path: the schedule's fraction and "
     "target sparsity count over whole matrices, and whether a fixed mask's pruned weights count"),
    (dict(group_lasso_strength=0.1, language_mask_files=["es:a.mask"]), "model.group_lasso_strength with "
     "model.language_mask_files: the schedule prunes one mask that every language shares"),
    (dict(group_lasso_strength=0.1, score_sparsity=0.1), "model.group_lasso_strength with model.score_sparsity: learned "
     "masks freeze the weights"),
    ({**SCHEDULE, "pruning_layers": "0-5"}, "model.pruning_layers: layer 2 is selected but the model has 2"),
    ({**SCHEDULE, "pruning_block": "48x1"}, r"model.pruning_block=48x1 does not tile encoder.layers.0.self_attn.q_proj"
     r".weight of shape \(64, 64\)"),
])
def test_a_bad_pruning_setting_is_refused_naming_its_key(overrides, message):
    from fairseq_subnets.plugin.components.errors import PluginInputError

    with pytest.raises(PluginInputError, match=f"^{message}"):
        build(**overrides)


class FairseqOptimizerStandIn:
    """What the model touches of fairseq's optimizer wrapper: `.optimizer`, the torch optimizer."""

    def __init__(self, model):
        self.optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.01)


def pruning(model):
    """The iterative_pruning technique on `model` (None when it is off)."""
    from fairseq_subnets.techniques.extension import technique_of
    from fairseq_subnets.techniques.iterative_pruning import IterativePruning

    return technique_of(model, IterativePruning)


def one_step(model, optimizer, updates_done):
    from fairseq_subnets.core.transforms import regularisation_terms

    model.set_num_updates(updates_done)
    model.train()
    source = torch.randn(2, 4000, generator=torch.Generator().manual_seed(updates_done))
    output = model(source=source, padding_mask=torch.zeros(2, 4000, dtype=torch.bool))
    loss = model.get_logits(output).float().pow(2).mean() + sum(regularisation_terms(model).values())
    optimizer.optimizer.zero_grad()
    loss.backward()
    optimizer.optimizer.step()
    model.after_optimizer_step(updates_done + 1, optimizer)


def test_an_lth_schedule_prunes_rewinds_and_empties_adam_at_each_event_and_switches_group_lasso_off():
    from fairseq_subnets.core.transforms import regularisation_terms

    model = build(**SCHEDULE, pruning_rewind_update=0, group_lasso_strength=0.1)
    theta_0 = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    optimizer = FairseqOptimizerStandIn(model)
    assert set(regularisation_terms(model)) == {"group_lasso"}
    # lambda_i = strength / mean block norm: at the start each matrix's term is strength x its block count
    blocks = 2 * (4 * 64 * 64 + 2 * 128 * 64) // 8
    assert float(regularisation_terms(model)["group_lasso"].detach()) == pytest.approx(0.1 * blocks, rel=1e-5)
    for update in range(6):
        one_step(model, optimizer, update)
        sparsity = pruning(model).current_sparsity(model)
        if update + 1 in (2, 4):  # the events: 0.5, then 0.75 clipped to 0.7
            assert optimizer.optimizer.state == {}, update
            assert all(torch.equal(p, theta_0[n]) for n, p in model.named_parameters() if p.requires_grad)
        else:
            assert optimizer.optimizer.state != {}
        assert sparsity == pytest.approx({0: 0.0, 1: 0.5, 2: 0.5, 3: 0.7, 4: 0.7, 5: 0.7}[update], abs=1e-3)
    model.set_num_updates(4)  # the target was reached at update 4
    assert float(regularisation_terms(model)["group_lasso"]) == 0.0


def test_group_lasso_shrinks_the_block_norms_against_the_same_training_without_it():
    """Two runs of the same steps on the same batches from the same weights, one with group lasso
    (the reference rule): after them the 8x1 block norms of the prunable matrices are smaller."""
    from fairseq_subnets.core.pruning import group_norms
    from fairseq_subnets.core.transforms import module_of
    from fairseq_subnets.plugin.components.models import W2V_PREFIX

    def mean_block_norm_after_training(**overrides):
        model = build(**overrides)
        optimizer = FairseqOptimizerStandIn(model)
        for update in range(5):
            one_step(model, optimizer, update)
        return float(torch.stack([group_norms(module_of(model, name, W2V_PREFIX).weight.detach(), (8, 1)).mean()
                                  for name in model.encoder_weight_shapes()]).mean())

    without = mean_block_norm_after_training()
    with_lasso = mean_block_norm_after_training(group_lasso_strength=1.0)
    assert with_lasso < 0.99 * without, (with_lasso, without)


def test_the_lambda_rules_give_the_documented_terms_after_the_weights_moved():
    """After a step the weights have moved: 'reference' keeps lambda from the start (the term
    moves with the norms), 'current' re-divides by today's mean norm (strength x block count
    again), 'constant' is strength x the sum of the norms."""
    from fairseq_subnets.core.pruning import group_norms
    from fairseq_subnets.core.transforms import regularisation_terms

    blocks = 2 * (4 * 64 * 64 + 2 * 128 * 64) // 8
    terms = {}
    for rule in ("reference", "current", "constant"):
        model = build(group_lasso_strength=0.1, group_lasso_lambda=rule)
        one_step(model, FairseqOptimizerStandIn(model), 0)
        terms[rule] = float(regularisation_terms(model)["group_lasso"].detach())
        norm_sum = sum(float(group_norms(module.weight.detach(), (8, 1)).sum())
                       for module in pruning(model).pruned_matrices(model).values())
    assert terms["current"] == pytest.approx(0.1 * blocks, rel=1e-5)
    assert terms["reference"] != pytest.approx(0.1 * blocks, rel=1e-4)
    assert terms["constant"] == pytest.approx(0.1 * norm_sum, rel=1e-5)


def test_a_checkpoint_pruned_beyond_the_target_is_refused_when_it_is_loaded():
    from fairseq_subnets.plugin.components.errors import PluginInputError

    pruned = build(**SCHEDULE)
    optimizer = FairseqOptimizerStandIn(pruned)
    for update in range(4):
        one_step(pruned, optimizer, update)
    lower_target = build(**{**SCHEDULE, "pruning_target_sparsity": 0.6})
    with pytest.raises(PluginInputError, match=r"^the checkpoint: its \d+ pruned matrices are already at sparsity "
                       r"0.7000, beyond model.pruning_target_sparsity=0.6"):
        lower_target.load_state_dict(pruned.state_dict())


def test_masks_one_block_past_the_target_by_rounding_load():
    """An event rounds each matrix's pruned count to whole blocks, which can leave every matrix
    just past the target (410 of 512 blocks for 0.8): a resumed run must still load them."""
    import math

    settings = {**SCHEDULE, "pruning_criterion": "block", "pruning_block": "8x1", "pruning_target_sparsity": 0.8}
    rounded_up = build(**settings)
    for mask in pruning(rounded_up).pruning_masks(rounded_up).values():
        rows, columns = mask.mask.shape
        blocks = rows * columns // 8
        pruned_blocks = math.ceil(0.8 * blocks)
        assert pruned_blocks / blocks > 0.8
        flat = mask.mask.view(rows, columns // 8, 8)
        flat.view(-1, 8)[:pruned_blocks] = False
    expected = {name: mask.kept() for name, mask in pruning(rounded_up).pruning_masks(rounded_up).items()}
    resumed = build(**settings)
    resumed.load_state_dict(rounded_up.state_dict())
    loaded = pruning(resumed).pruning_masks(resumed)
    assert all(torch.equal(loaded[name].kept(), kept) for name, kept in expected.items())


def test_a_model_rebuilt_for_decoding_has_the_masks_but_no_schedule_and_drops_its_training_state():
    """What fairseq-generate gets: the task nulls the schedule keys, the transform plan brings the
    masks back, and the rewind point in the checkpoint is not loaded."""
    from fairseq_subnets.plugin.components.models import SubnetsWav2VecCtc
    from fairseq_subnets.plugin.components.models import TRAINING_ONLY_MODEL_KEYS

    trained = build(**SCHEDULE, pruning_rewind_update=0)
    optimizer = FairseqOptimizerStandIn(trained)
    for update in range(2):
        one_step(trained, optimizer, update)
    state = trained.state_dict()
    assert any(key.startswith("iterative_pruning.rewind_point.") for key in state)
    cfg = trained.cfg
    with open_dict(cfg):
        for key in TRAINING_ONLY_MODEL_KEYS:
            cfg[key] = None
    decoder = SubnetsWav2VecCtc.build_model(cfg, types.SimpleNamespace(target_dictionary=range(32)))
    decoder.load_state_dict(state)
    assert pruning(decoder) is None and not hasattr(decoder, "iterative_pruning")
    assert decoder.mask_digest() == trained.mask_digest() != ""


def compose(name, overrides=()):
    from fairseq.dataclass.initialize import hydra_init
    from hydra import compose as hydra_compose, initialize_config_dir

    from fairseq_subnets import USER_DIR

    hydra_init(name)
    with initialize_config_dir(config_dir=f"{USER_DIR}/config/finetune", version_base="1.1"):
        return hydra_compose(config_name=name, overrides=list(overrides))


@pytest.mark.parametrize("scale, interval, target, events, max_update", [("tiny", 80, 0.6, 5, 600),
                                                                         ("xlsr_300m", 2000, 0.7, 6, None)])
def test_the_shipped_imp_and_lth_configs_are_the_base_config_with_the_schedule(scale, interval, target, events,
                                                                               max_update):
    """Composed as fairseq-hydra-train composes them. LTH restarts its learning-rate schedule once per
    pruning level, so its warm-up, hold and decay fill exactly one interval; at XLS-R size it steps
    the fp16 weights themselves (no fp32 copies a rewind would miss)."""
    from fairseq_subnets.techniques.iterative_pruning import pruning_schedule_of

    imp, lth = compose(f"imp_{scale}"), compose(f"lth_{scale}")
    for cfg in (imp, lth):
        schedule = pruning_schedule_of(cfg.model)
        assert (schedule.interval, schedule.fraction, schedule.target_sparsity) == (interval, 0.2, target)
        assert schedule.events == events and cfg.model.pruning_criterion == "block"
        assert cfg.model.pruning_scope == "layer" and cfg.model.pruning_block == "8x1"
        assert max_update is None or (cfg.optimization.max_update == max_update > schedule.final_update)
    assert imp.model.get("pruning_rewind_update") is None and imp.lr_scheduler._name == "tri_stage"
    assert lth.model.pruning_rewind_update == 0 and lth.lr_scheduler._name == "subnets_tri_stage"
    assert lth.lr_scheduler.warmup_steps + lth.lr_scheduler.hold_steps + lth.lr_scheduler.decay_steps == interval
    assert lth.lr_scheduler.phase_ratio is None
    if scale == "xlsr_300m":
        assert lth.common.fp16 and lth.common.memory_efficient_fp16


@pytest.mark.parametrize("scale", ["tiny", "xlsr_300m"])
def test_the_shipped_pathways_configs_are_multilingual_with_one_mask_file_per_language(scale):
    cfg = compose(f"pathways_{scale}", ["task.languages=[es,ca]", "model.language_mask_files=[es:/a.mask,ca:/b.mask]"])
    assert cfg.task._name == "subnets_multilingual_finetuning" and cfg.task.language_sampling_alpha == 0.5
    assert list(cfg.model.language_mask_files) == ["es:/a.mask", "ca:/b.mask"]
    assert cfg.common.memory_efficient_fp16 == (scale == "xlsr_300m")
    from omegaconf import OmegaConf

    assert OmegaConf.is_missing(compose(f"pathways_{scale}").model, "language_mask_files")


def test_the_restarting_schedule_continues_from_the_rewind_update_after_each_event():
    from fairseq_subnets.plugin.components.lr_schedules import RestartingTriStageSchedule

    cfg = types.SimpleNamespace(lr=[1.0], init_lr_scale=0.01, final_lr_scale=0.05, phase_ratio=None, warmup_steps=2,
                                hold_steps=2, decay_steps=4, max_update=100, pruning_interval=10,
                                pruning_fraction=0.5, pruning_target_sparsity=0.7, pruning_rewind_update=3)
    from fairseq.optim.sgd import SGD
    from omegaconf import OmegaConf

    optimizer = SGD(OmegaConf.create({"lr": [1.0], "momentum": 0.0, "weight_decay": 0.0}),
                    [torch.nn.Parameter(torch.zeros(1))])
    schedule = RestartingTriStageSchedule(cfg, optimizer)
    assert [schedule.schedule_position(u) for u in (0, 9, 10, 11, 19, 20, 21, 35)] == [0, 9, 3, 4, 12, 3, 4, 18]
    assert schedule.step_update(10) == schedule.step_update(3) == schedule.step_update(20)
    without_rewinding = RestartingTriStageSchedule(types.SimpleNamespace(**{**vars(cfg), "pruning_rewind_update": None}),
                                                   optimizer)
    assert [without_rewinding.schedule_position(u) for u in (0, 10, 35)] == [0, 10, 35]
