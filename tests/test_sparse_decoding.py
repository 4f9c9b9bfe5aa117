"""Sparse decoding (`model.sparse_decoding`): the CSR product against the dense one, the `auto`
rule, and models decoded in this process with it on against the same models decoded dense (fixed
masks, learned masks, one language of pathway masks): logits within 1e-4 (fp32), the same greedy
hypotheses, and proof that the sparse kernel ran and that attention did not take torch's fused path,
which reads the dense weights; and a pruned stock export, whose zeros are its masks. One test
decodes with stock fairseq-generate (slow). No timing is asserted: `auto` is checked for its rule,
its log and its outputs, not its speed."""
import logging

import pytest
import torch

from factory import (
    LETTERS, TINY, ctc_model, random_encoder_masks, write_pathways_checkpoint, write_plugin_checkpoint,
    write_run_checkpoint,
)

LOGIT_TOLERANCE = 1e-4


def kept_mask(shape, pattern, generator):
    """A bool mask of `shape`: `random-50`/`random-90` (that share pruned), `blocks-8x1` (runs of 8
    inputs of a row, 90% of them pruned) or `all-pruned`; row 1 is pruned whole in every pattern."""
    rows, columns = shape
    if pattern == "all-pruned":
        return torch.zeros(shape, dtype=torch.bool)
    if pattern == "blocks-8x1":
        mask = (torch.rand(rows, columns // 8, generator=generator) >= 0.9).repeat_interleave(8, dim=1)
    else:
        mask = torch.rand(rows, columns, generator=generator) >= int(pattern.split("-")[1]) / 100
    mask[1] = False
    return mask


@pytest.mark.parametrize("pattern", ["random-50", "random-90", "blocks-8x1", "all-pruned"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("frames_per_product", [1000, 4], ids=["one-product", "in-pieces-of-4-frames"])
def test_the_csr_product_equals_the_dense_one(pattern, with_bias, frames_per_product, monkeypatch):
    """Also in pieces of frames (a long utterance's), and contiguous as a dense projection's result."""
    from fairseq_subnets.techniques.sparse_decoding import kernels
    from fairseq_subnets.techniques.sparse_decoding.kernels import csr_of, sparse_linear

    monkeypatch.setattr(kernels, "FRAMES_PER_PRODUCT", frames_per_product)

    generator = torch.Generator().manual_seed(0)
    mask = kept_mask((96, 64), pattern, generator)
    weight = torch.randn(96, 64, generator=generator) * mask
    bias = torch.randn(96, generator=generator) if with_bias else None
    input = torch.randn(7, 3, 64, generator=generator)  # time x batch x channels, as fairseq's encoder runs
    weight_csr = csr_of(weight)
    assert weight_csr._nnz() == int(mask.sum())
    sparse = sparse_linear(input, weight_csr, bias)
    dense = torch.nn.functional.linear(input, weight, bias)
    assert sparse.shape == dense.shape == (7, 3, 96) and sparse.is_contiguous()
    assert (sparse - dense).abs().max() <= 1e-5
    assert torch.equal(sparse[..., 1], dense[..., 1])  # the pruned row: the bias alone (or 0)


def test_auto_takes_sparse_only_where_clearly_faster():
    from fairseq_subnets.techniques.sparse_decoding import kernels

    assert kernels.prefers_sparse(0.5, 1.0)
    assert not kernels.prefers_sparse(0.95, 1.0)  # within the margin: dense
    assert not kernels.prefers_sparse(1.0, 1.0)
    assert not kernels.prefers_sparse(2.0, 1.0)
    ticks = iter(range(1000))
    durations = {"sparse": [5, 1, 1, 9, 1], "dense": [3, 3, 2, 3, 4]}
    order = [kind for _ in range(kernels.AUTO_REPETITIONS) for kind in ("sparse", "dense")]
    clock_values = []
    for kind in order:  # start, end of each timed run, alternating sparse and dense
        start = next(ticks) * 100
        clock_values += [start, start + durations[kind].pop(0)]
    clock = iter(clock_values).__next__
    weight = torch.randn(8, 16)
    times = kernels.time_kernels(weight, kernels.csr_of(weight), None, frames=4, clock=clock)
    assert times == (1, 3) and times.sparse_is_faster  # the medians


class Calls:
    """Counts the calls of a function it replaces (pytest's monkeypatch restores it)."""

    def __init__(self, monkeypatch, owner, name):
        self.count = 0
        function = getattr(owner, name)

        def counted(*args, **kwargs):
            self.count += 1
            return function(*args, **kwargs)

        monkeypatch.setattr(owner, name, counted)


def utterances():
    """Two utterances of a batch, the second padded (its last quarter)."""
    generator = torch.Generator().manual_seed(7)
    source = torch.randn(2, 16000, generator=generator)
    padding_mask = torch.zeros(2, 16000, dtype=torch.bool)
    padding_mask[1, 12000:] = True
    source[1, 12000:] = 0
    return {"source": source, "padding_mask": padding_mask}


def decoded(model, net_input):
    """The CTC logits (before the softmax; frames x batch x symbols) and the greedy hypotheses."""
    from fairseq.data import Dictionary

    from fairseq_subnets.plugin.components.generator import CtcGreedyGenerator

    dictionary = Dictionary()
    for letter in LETTERS:
        dictionary.add_symbol(letter)
    with torch.no_grad():
        net_output = model(**net_input)
        hypotheses = CtcGreedyGenerator(dictionary, blank_index=dictionary.bos()).generate([model], {"net_input": net_input})
    return net_output["encoder_out"], [hypothesis[0]["tokens"].tolist() for hypothesis in hypotheses]


def loaded(checkpoint, data, mode):
    """The model of `checkpoint` as fairseq-generate loads it, with model.sparse_decoding=mode."""
    from fairseq import checkpoint_utils

    models, _, _ = checkpoint_utils.load_model_ensemble_and_task(
        [str(checkpoint)], arg_overrides={"data": str(data), "sparse_decoding": mode})
    return models[0].eval()


def assert_decodes_as_dense(dense, sparse, monkeypatch, sparse_matrices, stock_attentions):
    """`sparse` gives `dense`'s hypotheses and logits within tolerance, running per forward pass the
    sparse kernel `sparse_matrices` times and torch's stock attention pass (which reads the dense
    projection weights) `stock_attentions` times, and in every layer the attention's scores as one
    fused product (directly, or inside the stock pass), never as fairseq's unfused score matrix."""
    from fairseq_subnets.techniques.sparse_decoding import kernels

    net_input = utterances()
    dense_logits, dense_hypotheses = decoded(dense, net_input)
    sparse_products = Calls(monkeypatch, kernels, "sparse_linear")
    stock = Calls(monkeypatch, torch.nn.functional, "multi_head_attention_forward")
    fused_scores = Calls(monkeypatch, torch.nn.functional, "scaled_dot_product_attention")
    with torch.no_grad():
        sparse_logits = sparse(**net_input)["encoder_out"]
    assert (sparse_products.count, stock.count, fused_scores.count) == (sparse_matrices, stock_attentions,
                                                                          TINY["layers"])
    assert (sparse_logits - dense_logits).abs().max() <= LOGIT_TOLERANCE
    assert decoded(sparse, net_input)[1] == dense_hypotheses
    assert any(dense_hypotheses), "every hypothesis is empty: the comparison would prove nothing"


@pytest.fixture(scope="module")
def fixed_mask_checkpoint(tmp_path_factory):
    """A TINY model with random fixed masks at 90%, in a checkpoint without a transform plan (its
    masks come with its state) beside its dictionary."""
    folder = tmp_path_factory.mktemp("fixed")
    path, _, _ = write_plugin_checkpoint(folder, sparsity=0.9)
    return path, folder


def test_fixed_masks_decode_sparse_as_dense_with_attention_on_the_sparse_projections(fixed_mask_checkpoint, monkeypatch):
    checkpoint, data = fixed_mask_checkpoint
    sparse = loaded(checkpoint, data, "on")
    state = sparse.techniques[-1].state
    assert state.routed_attentions == TINY["layers"]
    assert_decodes_as_dense(loaded(checkpoint, data, "off"), sparse, monkeypatch,
                            sparse_matrices=6 * TINY["layers"], stock_attentions=0)
    assert len(state.sparse_names()) == 6 * TINY["layers"]


def test_an_attention_call_the_fused_product_cannot_serve_takes_the_unfused_path_through_the_sparse_projections(
        fixed_mask_checkpoint, monkeypatch):
    """Attention weights asked for (or incremental state, an attention mask...): fairseq's unfused
    path, which calls the projections, gives the stock pass's output and weights; the attention's
    own setting is as before after the call."""
    from fairseq_subnets.techniques.sparse_decoding import kernels

    checkpoint, data = fixed_mask_checkpoint
    dense, sparse = (loaded(checkpoint, data, mode).w2v_encoder.w2v_model.encoder.layers[0].self_attn
                     for mode in ("off", "on"))
    frames = torch.randn(9, 2, TINY["width"], generator=torch.Generator().manual_seed(3))
    padded = torch.zeros(2, 9, dtype=torch.bool)
    padded[1, 6:] = True
    sparse_products = Calls(monkeypatch, kernels, "sparse_linear")
    with torch.no_grad():
        expected_output, expected_weights = dense(frames, frames, frames, key_padding_mask=padded, need_weights=True)
        output, weights = sparse(frames, frames, frames, key_padding_mask=padded, need_weights=True)
    assert sparse_products.count == 4 and not sparse.skip_embed_dim_check
    assert (output - expected_output).abs().max() <= 1e-5 and (weights - expected_weights).abs().max() <= 1e-6


def loaded_through_our_task(checkpoint, data, overrides):
    """The model of `checkpoint` as `fairseq-generate --task subnets_audio_finetuning
    --model-overrides OVERRIDES` loads it: the task set up from the command line (not from the
    checkpoint, whose task a stock export names as the stock one), the overrides both in the run's
    config and applied to the checkpoint's."""
    from fairseq import checkpoint_utils, tasks
    from fairseq.dataclass.configs import FairseqConfig
    from omegaconf import OmegaConf

    from fairseq_subnets.plugin.components.tasks import SubnetsAudioFinetuningConfig

    cfg = OmegaConf.structured(FairseqConfig)
    cfg.task = OmegaConf.merge(OmegaConf.structured(SubnetsAudioFinetuningConfig),
                               {"_name": "subnets_audio_finetuning", "data": str(data), "labels": "ltr"})
    cfg.common_eval.path = str(checkpoint)
    cfg.common_eval.model_overrides = repr(overrides)
    models, _ = checkpoint_utils.load_model_ensemble([str(checkpoint)], task=tasks.setup_task(cfg.task),
                                                      arg_overrides={"data": str(data), **overrides})
    return models[0].eval()


UNPRUNED_IN_THE_EXPORT = "encoder.layers.0.self_attn.q_proj.weight"


@pytest.fixture(scope="module")
def stock_export(fixed_mask_checkpoint):
    """The stock export (`fairseq-subnets export`: model `wav2vec_ctc`, masks baked into exact
    zeros, none stored) of the fixed-mask checkpoint, with the zeros of one matrix
    (UNPRUNED_IN_THE_EXPORT) filled, as a matrix left unpruned holds none."""
    from fairseq_subnets.plugin.formats.checkpoints import load_checkpoint
    from fairseq_subnets.plugin.tools.export import export_plain_checkpoint
    from fairseq_subnets.techniques.extension import W2V_PREFIX

    checkpoint, data = fixed_mask_checkpoint
    exported = data / "stock.pt"
    export_plain_checkpoint(str(checkpoint), str(exported))
    written = load_checkpoint(exported)
    assert written["cfg"]["model"]["_name"] == "wav2vec_ctc" and "transform_plan" not in written["cfg"]["model"]
    unpruned = written["model"][W2V_PREFIX + UNPRUNED_IN_THE_EXPORT]
    assert (unpruned == 0).any()
    unpruned[unpruned == 0] = 0.01
    torch.save(written, exported)
    return exported, data


def test_a_pruned_stock_export_decodes_sparse_by_its_zeros_as_dense(stock_export, monkeypatch):
    """Through our task, `sparse_decoding=on` builds the plugin's model for the stock config, and
    every encoder matrix holding exact zeros runs sparse, its dense weight dropped; the one
    without a zero stays dense (its attention still calls the other three projections). Without
    the override, the stock model is built, as before."""
    from fairseq_subnets.plugin.components.models import SubnetsWav2VecCtc
    from fairseq_subnets.techniques.sparse_decoding import masked_projections

    checkpoint, data = stock_export
    dense = loaded_through_our_task(checkpoint, data, {})
    sparse = loaded_through_our_task(checkpoint, data, {"sparse_decoding": "on"})
    assert not isinstance(dense, SubnetsWav2VecCtc) and isinstance(sparse, SubnetsWav2VecCtc)
    assert not masked_projections(sparse)  # no mask: the zeros alone say what is pruned
    state = sparse.techniques[-1].state
    assert_decodes_as_dense(dense, sparse, monkeypatch, sparse_matrices=6 * TINY["layers"] - 1, stock_attentions=0)
    assert len(state.sparse_names()) == 6 * TINY["layers"] - 1 and UNPRUNED_IN_THE_EXPORT not in state.projections
    assert all(projection.dense_weight_dropped for projection in state.projections.values())


def test_learned_masks_decode_sparse_as_dense(tmp_path, monkeypatch):
    """Learned masks (FFN only, by default), binarised outside training: only fc1 and fc2 run
    sparse, and attention keeps torch's fused path."""
    (tmp_path / "dict.ltr.txt").write_text("".join(f"{letter} 1\n" for letter in LETTERS))
    checkpoint = tmp_path / "checkpoint.pt"
    write_run_checkpoint(checkpoint, score_sparsity=0.8)
    assert_decodes_as_dense(loaded(checkpoint, tmp_path, "off"), loaded(checkpoint, tmp_path, "on"), monkeypatch,
                            sparse_matrices=2 * TINY["layers"], stock_attentions=TINY["layers"])


def test_the_active_language_of_pathway_masks_decodes_sparse_and_a_switch_follows_it(monkeypatch):
    """The CSR form follows the active language's mask: after a switch, the other language's
    logits, not the first one's."""
    from fairseq_subnets.core.transforms import select_language
    from fairseq_subnets.techniques.extension import W2V_PREFIX
    from fairseq_subnets.techniques.pathways.layer import apply_language_masks
    from fairseq_subnets.techniques.sparse_decoding import enable_sparse_decoding, kernels

    model = ctc_model(vocab=len(LETTERS) + 4)
    masks = {language: random_encoder_masks(0.8, seed=seed, **TINY) for seed, language in enumerate(("es", "ca"))}
    apply_language_masks(model, masks, prefix=W2V_PREFIX)
    model.eval()
    net_input = utterances()
    dense = {}
    for language in masks:
        select_language(model, language)
        dense[language] = decoded(model, net_input)[0]
    assert (dense["es"] - dense["ca"]).abs().max() > 100 * LOGIT_TOLERANCE
    state = enable_sparse_decoding(model, "on")
    sparse_products = Calls(monkeypatch, kernels, "sparse_linear")
    for language in ("es", "ca", "es"):
        select_language(model, language)
        assert (decoded(model, net_input)[0] - dense[language]).abs().max() <= LOGIT_TOLERANCE, language
    assert sparse_products.count > 0 and len(state.sparse_names()) == 6 * TINY["layers"]


def test_the_kernel_check_before_the_first_batch_reads_no_pathway_mask():
    """fairseq-generate prepares the model for inference (where `on` checks each matrix's dtype
    and device) before its first batch selects a language: the check reads the stored weight,
    since computing the effective one needs a language."""
    from fairseq_subnets.core.transforms import TransformError
    from fairseq_subnets.errors import PluginInputError
    from fairseq_subnets.techniques.extension import W2V_PREFIX
    from fairseq_subnets.techniques.pathways.layer import apply_language_masks
    from fairseq_subnets.techniques.sparse_decoding import enable_sparse_decoding

    model = ctc_model(vocab=len(LETTERS) + 4)
    masks = {language: random_encoder_masks(0.8, seed=seed, **TINY) for seed, language in enumerate(("es", "ca"))}
    apply_language_masks(model, masks, prefix=W2V_PREFIX)
    state = enable_sparse_decoding(model.eval(), "on")
    projection = state.projections["encoder.layers.0.fc1.weight"]
    with pytest.raises(TransformError, match="no language selected"):
        projection.module.weight
    for projection in state.projections.values():
        projection.check_kernel_runs()
    model.half()
    float16 = r"^model.sparse_decoding=on: encoder\.layers\.\d\.\S+\.weight is float16 on cpu"
    with pytest.raises(PluginInputError, match=float16):
        for projection in state.projections.values():
            projection.check_kernel_runs()


def test_auto_decides_each_matrix_once_logs_it_and_decodes_as_dense(fixed_mask_checkpoint, caplog):
    checkpoint, data = fixed_mask_checkpoint
    dense, auto = loaded(checkpoint, data, "off"), loaded(checkpoint, data, "auto")
    net_input = utterances()
    with caplog.at_level(logging.INFO, logger="fairseq_subnets.techniques.sparse_decoding"):
        for _ in range(2):
            assert (decoded(auto, net_input)[0] - decoded(dense, net_input)[0]).abs().max() <= LOGIT_TOLERANCE
    decisions = [record.getMessage() for record in caplog.records if "sparse_decoding=auto: encoder." in record.getMessage()]
    assert len(decisions) == 6 * TINY["layers"], decisions  # once per matrix, not per forward pass
    assert all(decision.endswith(("-> sparse", "-> dense")) for decision in decisions)
    assert len(auto.techniques[-1].state.sparse_names()) == sum(decision.endswith("-> sparse") for decision in decisions)


def test_auto_settles_each_fixed_mask_matrix_once_decided_and_refuses_what_needs_its_mask(fixed_mask_checkpoint):
    """Fixed masks cannot change, so each decided matrix gives up its weight stack: a sparse one
    keeps its CSR form only (an empty weight), a dense one the effective weight as a plain weight
    (the dense export's); training, gradients and a state dict are refused by name. Each decision
    is forced once both ways (the timing itself decides nothing testable)."""
    from fairseq_subnets.core.transforms import stack_of
    from fairseq_subnets.errors import PluginInputError
    from fairseq_subnets.techniques.sparse_decoding import kernels

    checkpoint, data = fixed_mask_checkpoint
    dense = loaded(checkpoint, data, "off")
    net_input = utterances()
    dense_logits = decoded(dense, net_input)[0]
    dense_weights = {name: module.weight.detach().clone()
                     for name, module in dense.w2v_encoder.w2v_model.named_modules() if stack_of(module) is not None}
    for sparse_is_faster in (True, False):
        auto = loaded(checkpoint, data, "auto")
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(kernels, "prefers_sparse", lambda sparse, dense: sparse_is_faster)
            assert (decoded(auto, net_input)[0] - dense_logits).abs().max() <= LOGIT_TOLERANCE
        projections = auto.techniques[-1].state.projections
        assert len(projections) == 6 * TINY["layers"] and all(p.settled for p in projections.values())
        for name, projection in projections.items():
            module = projection.module
            assert stack_of(module) is None and projection.sparse == sparse_is_faster, name
            if sparse_is_faster:
                assert module.weight.numel() == 0, name
            else:
                assert torch.equal(module.weight, dense_weights[name[:-len(".weight")]]), name
        assert (decoded(auto, net_input)[0] - dense_logits).abs().max() <= LOGIT_TOLERANCE  # settled: no new decision
        refusal = (r"^encoder\.layers\.0\.self_attn\.q_proj\.weight: a forward pass in training mode or with "
                   r"gradients needs the dense weight and its mask, which model\.sparse_decoding=auto gave up \(it "
                   r"runs " + ("sparse" if sparse_is_faster else "dense"))
        with pytest.raises(PluginInputError, match=refusal):
            auto(**net_input)
        with pytest.raises(PluginInputError, match="a state dict needs the dense weight and its mask"):
            auto.state_dict()


def test_auto_drops_a_plain_weight_it_runs_sparse_and_leaves_one_it_keeps_dense_as_it_was(monkeypatch):
    """A matrix without a weight stack (a stock export's, masked by its zeros) has nothing but its
    dense weight to give up: `auto` drops it when it runs the matrix sparse, and otherwise leaves
    the module as it was, trainable."""
    from fairseq_subnets.techniques.sparse_decoding import SparseProjection, kernels

    input = torch.randn(3, 16)
    for sparse_is_faster in (True, False):
        linear = torch.nn.Linear(16, 8)
        with torch.no_grad():
            linear.weight[:, ::2] = 0
        dense_output = linear(input).detach()
        projection = SparseProjection(linear.eval(), "fc1.weight", "auto")
        monkeypatch.setattr(kernels, "prefers_sparse", lambda sparse, dense: sparse_is_faster)
        with torch.no_grad():
            assert (projection(input) - dense_output).abs().max() <= LOGIT_TOLERANCE
        assert projection.settled == projection.dense_weight_dropped == sparse_is_faster
        if not sparse_is_faster:
            linear.train()
            projection(input).sum().backward()
            assert linear.weight.grad is not None


def test_training_mode_and_gradients_run_the_dense_product_where_the_dense_weight_is_kept(monkeypatch):
    """Pathway masks keep their dense weights under `on` (a language switch needs them); a model
    whose dense weights were dropped refuses both (tests/test_compact_checkpoint.py)."""
    from fairseq_subnets.core.transforms import select_language
    from fairseq_subnets.techniques.extension import W2V_PREFIX
    from fairseq_subnets.techniques.pathways.layer import apply_language_masks
    from fairseq_subnets.techniques.sparse_decoding import enable_sparse_decoding, kernels

    model = ctc_model(vocab=len(LETTERS) + 4)
    masks = {language: random_encoder_masks(0.8, seed=seed, **TINY) for seed, language in enumerate(("es", "ca"))}
    apply_language_masks(model, masks, prefix=W2V_PREFIX)
    select_language(model, "es")
    model.eval()
    state = enable_sparse_decoding(model, "on")
    assert not any(projection.dense_weight_dropped for projection in state.projections.values())
    sparse_products = Calls(monkeypatch, kernels, "sparse_linear")
    fused = Calls(monkeypatch, torch.nn.functional, "multi_head_attention_forward")
    net_input = utterances()
    model(**net_input)  # eval mode, gradients on
    model.train()
    with torch.no_grad():
        model(**net_input)
    assert (sparse_products.count, fused.count) == (0, 2 * TINY["layers"])
    model.eval()
    with torch.no_grad():
        model(**net_input)
    assert (sparse_products.count, fused.count) == (6 * TINY["layers"], 2 * TINY["layers"])


@pytest.mark.slow
def test_fairseq_generate_with_sparse_decoding_gives_the_dense_hypotheses(tmp_path):
    """Stock fairseq-generate on a test split, dense and with
    `--model-overrides "{'sparse_decoding': 'on'}"`: the same hypotheses for every utterance, and
    the log says the masked matrices ran sparse. The checkpoint's config lacks the key, as in every
    checkpoint written before it existed (fairseq alone would drop the override). Its pruned stock
    export (no masks, model `wav2vec_ctc`) decodes sparse to the same hypotheses, its matrices taken
    as masked by their zeros, their dense weights dropped. A pathways checkpoint decodes one
    language (`--decode-language ca`) sparse to its dense hypotheses, its dense weights kept."""
    from checkpoint_helpers import two_at_a_time, write_test_split
    from fairseq_subnets.runner import generate, read_generate_output

    from fairseq_subnets.plugin.formats.checkpoints import load_checkpoint
    from fairseq_subnets.plugin.tools.export import export_plain_checkpoint

    checkpoint, _, _ = write_plugin_checkpoint(tmp_path, sparsity=0.9, full_task_config=True)
    written = load_checkpoint(checkpoint)
    del written["cfg"]["model"]["sparse_decoding"]
    torch.save(written, checkpoint)
    exported = tmp_path / "stock.pt"
    export_plain_checkpoint(str(checkpoint), str(exported))
    utterance_count = write_test_split(tmp_path)
    multilingual = tmp_path / "multilingual"
    multilingual.mkdir()
    pathways = write_pathways_checkpoint(multilingual)
    write_test_split(multilingual / "ca")
    decode_ca = ("--task", "subnets_multilingual_finetuning", "--languages", "es,ca", "--decode-language", "ca")
    sparse_on = ("--model-overrides", "{'sparse_decoding': 'on'}")
    dense, sparse, stock, pathways_dense, pathways_sparse = two_at_a_time(
        (generate, tmp_path, checkpoint, "test", tmp_path / "dense"),
        (generate, tmp_path, checkpoint, "test", tmp_path / "sparse", True, sparse_on),
        (generate, tmp_path, exported, "test", tmp_path / "stock", True, sparse_on),
        (generate, multilingual, pathways, "test", tmp_path / "pathways_dense", True, (), None, decode_ca),
        (generate, multilingual, pathways, "test", tmp_path / "pathways_sparse", True, sparse_on, None, decode_ca))
    for reference, runs in ((dense, (sparse, stock)), (pathways_dense, (pathways_sparse,))):
        dense_hypotheses = read_generate_output(reference.results_file.read_text())[1]
        assert len(dense_hypotheses) == utterance_count and any(dense_hypotheses.values()), reference.results_file
        for run in runs:
            assert read_generate_output(run.results_file.read_text())[1] == dense_hypotheses, run.results_file
    matrices = 6 * TINY["layers"]
    log = (tmp_path / "pathways_sparse" / "generate-test.log").read_text()
    assert f"sparse_decoding=on: {matrices} masked encoder matrices run with torch's CSR kernels" in log
    assert "; 0 dense weights dropped" in log  # a language switch would need them
    log = (tmp_path / "sparse" / "generate-test.log").read_text()
    assert f"sparse_decoding=on: {matrices} masked encoder matrices run with torch's CSR kernels" in log
    assert "masked encoder matrices run with" not in (tmp_path / "dense" / "generate-test.log").read_text()
    log = (tmp_path / "stock" / "generate-test.log").read_text()
    assert f"sparse_decoding=on: {matrices} encoder matrices without a mask are taken as masked by their exact " \
           "zeros" in log
    assert f"sparse_decoding=on: {matrices} masked encoder matrices run with torch's CSR kernels" in log
    assert f"{matrices} dense weights dropped" in log


def test_a_weight_without_a_sparse_cpu_kernel_is_refused_under_on_and_kept_dense_under_auto(monkeypatch):
    """torch's CPU CSR product takes float32 and float64: a float16 projection stops at its first
    forward pass under `on` (fairseq-generate --fp16 is refused before that, when the model is
    prepared for inference: `decode-sparse-fp16` in tests/test_bad_inputs_compact.py), and runs
    dense under `auto`."""
    from fairseq_subnets.errors import PluginInputError
    from fairseq_subnets.techniques.sparse_decoding import SparseProjection, kernels

    linear = torch.nn.Linear(16, 8).half().eval()
    input = torch.randn(3, 16).half()
    sparse_products = Calls(monkeypatch, kernels, "sparse_linear")
    with torch.no_grad():
        with pytest.raises(PluginInputError, match=r"^model.sparse_decoding=on: fc1.weight is float16 on cpu"):
            SparseProjection(linear, "fc1.weight", "on")(input)
        assert torch.equal(SparseProjection(linear, "fc1.weight", "auto")(input), linear(input))
    assert sparse_products.count == 0
