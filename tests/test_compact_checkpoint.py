"""The compact checkpoint (`export --compact`, core.compact, plugin.formats.compact) and the weight
memory of the sparse path: exact round trips of the mask and value coding, the bytes against the
dense export, the checks of a damaged file, loading straight into CSR with no dense weight, the
refusals once a dense weight is dropped, and one stock fairseq-generate run against the dense
export (slow). The refusals a user meets from commands are in tests/test_bad_inputs_compact.py."""
import io
import pickletools
import zipfile

import pytest
import torch

from factory import write_plugin_checkpoint
from test_output_permissions import UMASKS
from test_sparse_decoding import decoded, loaded, utterances

SPARSITIES = (0.0, 0.5, 0.9, 0.95, 1.0)


def masked_weight(shape, sparsity, pattern, seed):
    """A float32 weight of `shape` pruned at `sparsity`, at random or in 8x1 blocks."""
    generator = torch.Generator().manual_seed(seed)
    rows, columns = shape
    if pattern == "blocks":
        kept = (torch.rand(rows, columns // 8, generator=generator) >= sparsity).repeat_interleave(8, dim=1)
    else:
        kept = torch.rand(rows, columns, generator=generator) >= sparsity
    return torch.randn(shape, generator=generator) * 0.02 * kept + 0.0  # + 0.0: pruned weights are +0, not -0


def bits(tensor):
    return tensor.contiguous().view(torch.int32)


@pytest.mark.parametrize("pattern", ["random", "blocks"])
@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_the_coding_of_a_matrix_round_trips_exactly(sparsity, pattern):
    from fairseq_subnets.core.compact import compact_state, read_compact_state

    for seed, shape in enumerate(((96, 64), (3, 8), (1, 8))):
        weight = masked_weight(shape, sparsity, pattern, seed)
        _, matrices = read_compact_state(compact_state({"w": weight}, ["w"], b""), "label")
        assert torch.equal(bits(matrices["w"].dense()), bits(weight))
        csr = matrices["w"].csr()
        assert csr.crow_indices().dtype == torch.int32 and csr._nnz() == int((weight != 0).sum())
        assert torch.equal(bits(csr.to_dense()), bits(weight))


def test_the_coding_keeps_every_float32_bit_pattern():
    """Odd kept values (infinities, NaN with a payload, subnormals, extremes, both signs) come back bit
    for bit; a negative zero is a pruned weight (the same value)."""
    from fairseq_subnets.core.compact import compact_state, read_compact_state

    odd = torch.tensor([float("inf"), -float("inf"), 1e-45, -1e-40, 3.4e38, -3.4e38, 1.0, -2.5])
    nan_with_payload = torch.tensor([0x7FC01234], dtype=torch.int32).view(torch.float32)
    weight = torch.zeros(4, 8)
    weight.view(-1)[::3] = torch.cat([odd, nan_with_payload, odd[:2]])
    weight[3, 7] = -0.0
    _, matrices = read_compact_state(compact_state({"w": weight}, ["w"], b""), "label")
    expected = weight.clone()
    expected[3, 7] = 0.0
    assert torch.equal(bits(matrices["w"].dense()), bits(expected))


def global_l1_state(sparsity, layers=2, width=256, ffn=1024, unpruned=0):
    """Encoder-shaped matrices pruned together by magnitude (global L1), plus an unpruned tensor of
    `unpruned` weights; returns (state, the keys of the pruned matrices)."""
    generator = torch.Generator().manual_seed(0)
    state = {}
    for layer in range(layers):
        for kind, shape in (("q", (width, width)), ("k", (width, width)), ("v", (width, width)),
                            ("out", (width, width)), ("fc1", (ffn, width)), ("fc2", (width, ffn))):
            state[f"encoder.layers.{layer}.{kind}.weight"] = torch.randn(shape, generator=generator) * 0.02
    keys = list(state)
    magnitudes = torch.cat([state[key].abs().reshape(-1) for key in keys])
    threshold = magnitudes.kthvalue(int(sparsity * magnitudes.numel())).values
    for key in keys:
        state[key] = state[key] * (state[key].abs() > threshold)
    if unpruned:
        state["feature_extractor.weight"] = torch.randn(unpruned, generator=generator)
    return state, keys


def saved_bytes(state):
    buffer = io.BytesIO()
    torch.save({"model": state}, buffer)
    return len(buffer.getvalue())


@pytest.mark.parametrize("sparsity, at_most", [(0.9, 0.15), (0.95, 0.10), (0.5, 0.55)])
def test_the_compact_state_takes_a_fraction_of_the_dense_bytes(sparsity, at_most, tmp_path):
    """At a small encoder shape where the matrices dominate, as at XLS-R size (the arithmetic of
    docs/deploying.md): 90% pruned takes at most 0.15x the dense bytes, with 4% unpruned weights
    beside the encoder, about XLS-R 300M's share. Written by the function the `bench` group
    calls, and read back."""
    from fairseq_subnets.plugin.formats.compact import read_compact_checkpoint, write_compact_model_state
    from fairseq_subnets.techniques.extension import W2V_PREFIX

    state, keys = global_l1_state(sparsity)
    matrix_weights = sum(state[key].numel() for key in keys)
    state, keys = global_l1_state(sparsity, unpruned=int(0.045 * matrix_weights))
    state = {W2V_PREFIX + key: value for key, value in state.items()}
    compact_bytes = write_compact_model_state(tmp_path / "compact.pt", state, keys)
    assert compact_bytes == (tmp_path / "compact.pt").stat().st_size
    ratio = compact_bytes / saved_bytes(state)
    assert ratio <= at_most, ratio
    _, plain, matrices = read_compact_checkpoint(tmp_path / "compact.pt")
    assert all(torch.equal(matrix.dense(), state[key]) for key, matrix in matrices.items())


def stored_globals(path):
    """The classes and functions the pickle of a torch.save file names."""
    with zipfile.ZipFile(path) as archive:
        (name,) = [entry for entry in archive.namelist() if entry.endswith("/data.pkl")]
        opcodes = list(pickletools.genops(archive.read(name)))
    names, strings = set(), []
    for opcode, argument, _ in opcodes:
        if isinstance(argument, str):
            strings.append(argument)
        if opcode.name == "STACK_GLOBAL":
            names.add(".".join(strings[-2:]))
        elif opcode.name == "GLOBAL":
            names.add(argument.replace(" ", "."))
    return names


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A folder with a TINY fixed-mask checkpoint at 90% (and its dictionary), its dense export and
    its compact export."""
    from fairseq_subnets.plugin.tools.export import export_plain_checkpoint

    folder = tmp_path_factory.mktemp("compact")
    checkpoint, _, masks = write_plugin_checkpoint(folder, sparsity=0.9, full_task_config=True)
    export_plain_checkpoint(str(checkpoint), str(folder / "dense.pt"))
    export_plain_checkpoint(str(checkpoint), str(folder / "compact.pt"), compact=True)
    return folder, masks


def test_the_file_is_a_weights_only_checkpoint_of_tensors_and_plain_data(exported):
    from fairseq_subnets.core.compact import METADATA_KEY
    from fairseq_subnets.plugin.formats.compact import read_compact_checkpoint

    folder, masks = exported
    assert stored_globals(folder / "compact.pt") <= {"torch._utils._rebuild_tensor_v2", "torch.FloatStorage",
                                                     "torch.ByteStorage", "torch.LongStorage", "torch.BoolStorage",
                                                     "collections.OrderedDict", "torch.serialization._get_layout"}
    checkpoint, plain, matrices = read_compact_checkpoint(folder / "compact.pt")
    assert checkpoint["model"][METADATA_KEY].dtype == torch.uint8
    assert checkpoint["cfg"]["model"]["_name"] == "subnets_wav2vec_ctc"
    assert checkpoint["cfg"]["model"]["compact_checkpoint"] is True and "task_state" not in checkpoint
    assert sorted(matrices) == sorted(f"w2v_encoder.w2v_model.{name}" for name in masks)
    dense = torch.load(folder / "dense.pt", weights_only=True)["model"]
    for key, matrix in matrices.items():
        assert torch.equal(matrix.dense(), dense[key])
    assert all(torch.equal(value, dense[key]) for key, value in plain.items())


def damaged_copies(source, folder):
    """name -> a damaged copy of the compact checkpoint `source` (truncated; one byte of a coded
    stream flipped; a matrix's shape edited in its description; an extra tensor; a plain tensor
    changed; the model config edited), each saved as a valid torch file except the first."""
    from fairseq_subnets.core.compact import METADATA_KEY

    data = source.read_bytes()
    copies = {"truncated": data[:len(data) // 2]}
    for name in ("flipped", "reshaped", "extra", "plain", "config"):
        checkpoint = torch.load(source, weights_only=True)
        state = checkpoint["model"]
        if name == "flipped":
            stream = next(key for key in state if key.endswith("::low_bytes"))
            state[stream][5] ^= 1
        elif name == "reshaped":
            state[METADATA_KEY] = torch.tensor(list(bytes(state[METADATA_KEY].tolist()).replace(
                b'"shape": [64, 64]', b'"shape": [32, 128]', 1)), dtype=torch.uint8)
        elif name == "extra":
            state["w2v_encoder.proj.extra"] = torch.zeros(1)
        elif name == "config":
            checkpoint["cfg"]["model"]["final_dropout"] = 0.5
        else:
            state["w2v_encoder.proj.bias"][0] += 1
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        copies[name] = buffer.getvalue()
    paths = {}
    for name, content in copies.items():
        paths[name] = folder / f"{name}.pt"
        paths[name].write_bytes(content)
    return paths


def test_a_damaged_compact_checkpoint_is_refused_with_one_line_naming_it(exported, tmp_path):
    from fairseq_subnets.core.compact import CompactStateError
    from fairseq_subnets.plugin.formats.checkpoints import CheckpointLoadError
    from fairseq_subnets.plugin.formats.compact import check_checkpoints_to_decode

    folder, _ = exported
    expected = {"truncated": "damaged torch checkpoint", "flipped": "checksum mismatch",
                "reshaped": "checksum mismatch", "extra": "which its description does not list",
                "plain": "checksum mismatch", "config": "its config or another field beside the weights differs"}
    for name, path in damaged_copies(folder / "compact.pt", tmp_path).items():
        with pytest.raises((CompactStateError, CheckpointLoadError)) as refused:
            check_checkpoints_to_decode([str(path)])
        message = str(refused.value)
        assert message.startswith(f"{path}: ") and expected[name] in message and "\n" not in message, (name, message)


def test_the_compact_checkpoint_loads_into_csr_without_dense_weights(exported, monkeypatch):
    """Under `on` (the checkpoint's own setting) every masked matrix runs the CSR form of its kept
    values, with int32 indices, no dense matrix is rebuilt from the file, and the matrices'
    weight memory is at most 0.35x of dense at 90%; the logits and hypotheses are the dense
    export's. Under `off` and `auto` the dense weights are rebuilt (`auto` then times them)."""
    from fairseq_subnets.core.compact import CompactMatrix

    folder, masks = exported
    dense_model = loaded(folder / "dense.pt", folder, "off")
    rebuilt = []
    dense_of = CompactMatrix.dense
    monkeypatch.setattr(CompactMatrix, "dense", lambda matrix: rebuilt.append(matrix.key) or dense_of(matrix))
    model = loaded(folder / "compact.pt", folder, "on")
    assert rebuilt == []
    projections = model.techniques[-1].state.projections
    assert sorted(projections) == sorted(masks)
    sparse_bytes = dense_bytes = 0
    for name, projection in projections.items():
        assert projection.dense_weight_dropped and projection.module.weight.numel() == 0
        csr = projection.weight_csr
        assert csr.col_indices().dtype == torch.int32
        sparse_bytes += sum(t.numel() * t.element_size() for t in (csr.values(), csr.col_indices(), csr.crow_indices()))
        dense_bytes += 4 * masks[name].numel()
    assert sparse_bytes <= 0.35 * dense_bytes, sparse_bytes / dense_bytes
    net_input = utterances()
    dense_logits, dense_hypotheses = decoded(dense_model, net_input)
    logits, hypotheses = decoded(model, net_input)
    assert (logits - dense_logits).abs().max() <= 1e-4 and hypotheses == dense_hypotheses and any(hypotheses)
    off_logits, _ = decoded(loaded(folder / "compact.pt", folder, "off"), net_input)
    assert torch.equal(off_logits, dense_logits)  # rebuilt dense: the stock export bit for bit
    auto = loaded(folder / "compact.pt", folder, "auto")  # rebuilt dense, each matrix timed
    auto_logits, auto_hypotheses = decoded(auto, net_input)
    assert (auto_logits - dense_logits).abs().max() <= 1e-4 and auto_hypotheses == dense_hypotheses
    assert sorted(auto.techniques[-1].state.projections) == sorted(masks)


def test_sparse_decoding_on_drops_the_dense_weights_of_a_fixed_mask_model_and_refuses_what_needs_them(exported):
    from fairseq_subnets.errors import PluginInputError

    folder, masks = exported
    model = loaded(folder / "checkpoint_best.pt", folder, "on")
    fc1 = model.w2v_encoder.w2v_model.encoder.layers[0].fc1
    assert fc1.weight.numel() == 0 and not hasattr(fc1, "parametrizations")
    assert fc1.forward.weight_csr.col_indices().dtype == torch.int32
    assert all(projection.dense_weight_dropped for projection in model.techniques[-1].state.projections.values())
    net_input = utterances()
    with pytest.raises(PluginInputError, match=r"^encoder\.layers\.0\.self_attn\.q_proj\.weight: a forward pass in "
                                               r"training mode or with gradients needs the dense weight"):
        model(**net_input)  # eval mode, gradients on
    with pytest.raises(PluginInputError, match="a state dict needs the dense weight"):
        model.state_dict()
    model.train()
    with torch.no_grad(), pytest.raises(PluginInputError, match="training mode or with gradients"):
        model(**net_input)


@pytest.mark.slow
def test_fairseq_generate_decodes_the_compact_checkpoint_as_the_dense_export(exported):
    """Stock fairseq-generate with the plugin on the dense export and on the compact checkpoint:
    the same hypotheses for every utterance; the compact one ran its matrices from CSR with its
    dense weights dropped."""
    from checkpoint_helpers import two_at_a_time, write_test_split
    from fairseq_subnets.runner import generate, read_generate_output

    folder, masks = exported
    utterance_count = write_test_split(folder)
    dense, compact = two_at_a_time((generate, folder, folder / "dense.pt", "test", folder / "dense"),
                                   (generate, folder, folder / "compact.pt", "test", folder / "compact"))
    dense_hypotheses = read_generate_output(dense.results_file.read_text())[1]
    assert len(dense_hypotheses) == utterance_count and any(dense_hypotheses.values())
    assert read_generate_output(compact.results_file.read_text())[1] == dense_hypotheses
    log = (folder / "compact" / "generate-test.log").read_text()
    assert f"sparse_decoding=on: {len(masks)} masked encoder matrices run with torch's CSR kernels" in log
    assert f"{len(masks)} dense weights dropped" in log


def test_compact_export_takes_the_masks_of_mask_and_of_language_as_export_does(tmp_path, exported):
    """`--mask` on an unmasked checkpoint, and `--language` of a pathways checkpoint: the coded
    matrices are those masks', and each decodes to the dense export's weight."""
    from omegaconf import OmegaConf

    from factory import write_run_checkpoint
    from fairseq_subnets.core.maskfile import save_mask_file
    from fairseq_subnets.plugin.formats.compact import read_compact_checkpoint
    from fairseq_subnets.plugin.tools.export import export_plain_checkpoint
    from test_upstream import FC1, pathways_checkpoint

    folder, masks = exported
    save_mask_file(str(tmp_path / "masks.safetensors"), masks, {"method": "random"})
    unmasked = tmp_path / "unmasked.pt"
    write_run_checkpoint(unmasked)
    pathways = tmp_path / "pathways.pt"
    checkpoint = pathways_checkpoint.__wrapped__()
    checkpoint["cfg"]["model"] = OmegaConf.to_container(OmegaConf.create(checkpoint["cfg"]["model"]), enum_to_str=True)
    checkpoint["cfg"]["model"]["_name"] = "subnets_wav2vec_ctc"
    torch.save(checkpoint, pathways)
    for source, options, expected in ((unmasked, {"mask_path": str(tmp_path / "masks.safetensors")},
                                       [f"w2v_encoder.w2v_model.{name}" for name in masks]),
                                      (pathways, {"language": "ca"}, [f"{FC1}.weight"])):
        export_plain_checkpoint(str(source), str(tmp_path / "dense.pt"), **options)
        export_plain_checkpoint(str(source), str(tmp_path / "compact.pt"), compact=True, **options)
        dense = torch.load(tmp_path / "dense.pt", weights_only=True)["model"]
        _, plain, matrices = read_compact_checkpoint(tmp_path / "compact.pt")
        assert sorted(matrices) == sorted(expected), source
        assert all(torch.equal(matrix.dense(), dense[key]) for key, matrix in matrices.items())
        assert plain.keys() | matrices.keys() == dense.keys()


@pytest.mark.parametrize("umask, expected", UMASKS, ids=["umask-022", "umask-027"])
def test_the_compact_checkpoint_follows_the_umask_and_leaves_nothing_else(umask, expected, exported, tmp_path, capsys):
    from fairseq_subnets.cli.main import main
    from test_output_permissions import mode, process_umask

    folder, _ = exported
    out = tmp_path / "compact.pt"
    with process_umask(umask):
        assert main(["export", str(folder / "checkpoint_best.pt"), "--compact", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    assert oct(mode(out)) == oct(expected) and [path.name for path in tmp_path.iterdir()] == ["compact.pt"]


def test_the_look_before_decoding_leaves_legacy_and_plain_checkpoints_to_fairseq(exported, tmp_path):
    """Only zip-format files are looked at (torch's legacy format cannot be mapped, and a compact
    checkpoint is never in it), and only compact ones are checked: a plain checkpoint passes."""
    from fairseq_subnets.plugin.formats.compact import check_checkpoints_to_decode

    folder, _ = exported
    legacy = tmp_path / "legacy.pt"
    torch.save(torch.load(folder / "dense.pt", weights_only=True), legacy, _use_new_zipfile_serialization=False)
    check_checkpoints_to_decode([str(legacy), str(folder / "dense.pt"), str(folder / "compact.pt"),
                                 str(tmp_path / "missing.pt")])
