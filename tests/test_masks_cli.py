"""`fairseq-subnets prune | masks | export | bench prune` on small checkpoints in fairseq's real format."""
import json

import pytest
import torch

from fairseq_subnets.cli.main import main

SUBCOMMANDS = [["prune"], ["export"], ["bench"], ["bench", "prune"], ["masks"]] + [
    ["masks", name] for name in
    ("stats", "iou", "union", "intersect", "diff", "complement", "ratio", "similarity", "correlate")
]


def tiny_wav2vec2_state():
    from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model

    torch.manual_seed(0)
    config = Wav2Vec2Config(encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=64,
                            encoder_attention_heads=2, final_dim=16,
                            conv_feature_layers="[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32,2,2)] * 2")
    return Wav2Vec2Model(config).state_dict()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A pretrained-format and a fine-tuned-CTC-format checkpoint holding the same encoder."""
    directory = tmp_path_factory.mktemp("checkpoints")
    state = tiny_wav2vec2_state()
    pretrained, finetuned = directory / "pretrained.pt", directory / "finetuned.pt"
    torch.save({"model": state, "cfg": {"model": {"_name": "wav2vec2"}}}, pretrained)
    ctc_state = {f"w2v_encoder.w2v_model.{key}": value for key, value in state.items()}
    ctc_state["w2v_encoder.proj.weight"] = torch.randn(10, 32)
    torch.save({"model": ctc_state, "cfg": {"model": {"_name": "wav2vec_ctc"}}}, finetuned)
    return pretrained, finetuned


def run(capsys, *argv):
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_json(capsys, *argv):
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.mark.parametrize("argv", SUBCOMMANDS, ids=" ".join)
def test_every_subcommand_has_help(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv + ["--help"])
    assert exit_info.value.code == 0
    assert "usage: fairseq-subnets" in capsys.readouterr().out


@pytest.mark.parametrize("method", ["global-l1", "layer-l1", "block-l2", "random"])
def test_prune_pretrained_and_finetuned_give_the_same_mask(method, checkpoints, tmp_path, capsys):
    pretrained, finetuned = checkpoints
    written = [run_json(capsys, "prune", ckpt, "--method", method, "--sparsity", 0.7, "--out", tmp_path / f"{i}.st")
               for i, ckpt in enumerate(checkpoints)]
    weights = 2 * (4 * 32 * 32 + 2 * 32 * 64)
    assert written[0]["weights"] == weights and written[0]["matrices"] == 12
    if method == "global-l1":
        assert written[0]["kept"] == weights - round(0.7 * weights)
    assert run_json(capsys, "masks", "iou", tmp_path / "0.st", tmp_path / "1.st")["iou"] == 1.0
    stats = run_json(capsys, "masks", "stats", tmp_path / "0.st")
    assert stats["sparsity"] == pytest.approx(0.7, abs=5e-3)  # per-matrix rounding (blocks: 8 weights each)
    assert stats["metadata"]["method"] == method and stats["metadata"]["source"] == "pretrained.pt"
    assert stats["metadata"]["source_fingerprint"].startswith("sha256-")


def test_prune_a_selection_and_show_stats_as_table_and_csv(checkpoints, tmp_path, capsys):
    mask = tmp_path / "ffn.st"
    assert run(capsys, "prune", checkpoints[1], "--method", "block-l2", "--block", "4x2", "--sparsity", 0.5,
               "--targets", "ffn", "--layers", "1", "--out", mask)[0] == 0
    stats = run_json(capsys, "masks", "stats", mask, "--by", "kind")
    assert list(stats["groups"]) == ["fc1", "fc2", "total"]
    assert stats["metadata"]["targets"] == "fc1,fc2" and stats["metadata"]["layers"] == "1"
    assert stats["metadata"]["block"] == "4x2" and stats["sparsity"] == 0.5
    code, out, _ = run(capsys, "masks", "stats", mask)
    assert code == 0 and "method=block-l2" in out and out.splitlines()[1].split() == ["layer", "weights", "kept", "sparsity"]
    code, out, _ = run(capsys, "masks", "stats", mask, "--csv")
    assert out.splitlines() == ["layer,weights,kept,sparsity", "1,4096,2048,0.5", "total,4096,2048,0.5"]


def test_prune_within_an_earlier_mask_removes_more_of_what_it_kept(checkpoints, tmp_path, capsys):
    """Iterative pruning by hand: prune, (train under the mask,) prune again within it."""
    from fairseq_subnets.core.maskfile import load_mask_file

    first, second = tmp_path / "first.st", tmp_path / "second.st"
    run_json(capsys, "prune", checkpoints[1], "--method", "block-l2", "--sparsity", 0.2, "--targets", "ffn",
             "--out", first)
    written = run_json(capsys, "prune", checkpoints[1], "--method", "block-l2", "--sparsity", 0.36, "--targets", "ffn",
                       "--within", first, "--out", second)
    earlier, later = load_mask_file(str(first)), load_mask_file(str(second))
    assert written["kept"] == 4 * 8 * (256 - round(0.36 * 256))  # 4 FFN matrices of 256 8x1 blocks
    assert all(not (later.masks[name] & ~earlier.masks[name]).any() for name in earlier.masks)
    assert later.metadata["within"] == "first.st"
    code, _, err = run(capsys, "prune", checkpoints[1], "--method", "block-l2", "--sparsity", 0.5, "--within", first,
                       "--out", tmp_path / "third.st")
    assert code == 2 and not (tmp_path / "third.st").exists()
    assert err.strip().splitlines()[-1] == (
        f"fairseq-subnets prune: error: {checkpoints[1]} within {first}: encoder.layers.0.self_attn.k_proj.weight: "
        "only the weights hold it; the mask to prune within must cover exactly the selected matrices (it was pruned "
        "with --targets fc1,fc2 --layers all)")
    code, _, err = run(capsys, "prune", checkpoints[1], "--method", "layer-l1", "--sparsity", 0.5, "--within",
                       tmp_path / "missing.st", "--out", tmp_path / "third.st")
    assert code == 2 and "missing.st: no such mask file" in err


def test_algebra_commands_write_mask_files(checkpoints, tmp_path, capsys):
    a, b = tmp_path / "a.st", tmp_path / "b.st"
    run_json(capsys, "prune", checkpoints[0], "--method", "random", "--seed", 1, "--sparsity", 0.5, "--out", a)
    run_json(capsys, "prune", checkpoints[0], "--method", "random", "--seed", 2, "--sparsity", 0.5, "--out", b)
    union = run_json(capsys, "masks", "union", a, b, "--out", tmp_path / "u.st")
    both = run_json(capsys, "masks", "intersect", a, b, "--out", tmp_path / "i.st")
    only_a = run_json(capsys, "masks", "diff", a, b, "--out", tmp_path / "d.st")
    flipped = run_json(capsys, "masks", "complement", a, "--out", tmp_path / "c.st")
    weights = union["weights"]
    assert union["kept"] + both["kept"] == weights  # |a|+|b| = |a|+|b| with |a| = |b| = weights / 2
    assert only_a["kept"] == weights // 2 - both["kept"] and flipped["kept"] == weights // 2
    iou = run_json(capsys, "masks", "iou", a, b, "--by", "kind")
    assert iou["iou"] == pytest.approx(both["kept"] / union["kept"])
    assert set(iou["groups"]) == {"q", "k", "v", "out", "fc1", "fc2", "total"}
    ratio = run_json(capsys, "masks", "ratio", a, b)
    assert ratio["union_ratio"] == pytest.approx(union["kept"] / weights)
    assert run_json(capsys, "masks", "stats", tmp_path / "u.st")["metadata"]["method"] == "union"


def test_similarity_and_correlation(checkpoints, tmp_path, capsys):
    paths = []
    for seed in range(4):
        paths.append(tmp_path / f"lang{seed}.st")
        run_json(capsys, "prune", checkpoints[0], "--method", "random", "--seed", seed, "--sparsity", 0.3 + 0.1 * seed,
                 "--targets", "ffn", "--out", paths[-1])
    similarity = run_json(capsys, "masks", "similarity", *paths, "--labels", "es,en,de,fr")
    assert similarity["labels"] == ["es", "en", "de", "fr"] and list(similarity["matrices"]) == ["0", "1", "total"]
    assert similarity["matrices"]["total"][0][0] == 1.0
    code, out, _ = run(capsys, "masks", "similarity", *paths, "--by", "total", "--csv")
    assert code == 0 and out.splitlines()[0] == "total,mask_a,mask_b,cosine" and len(out.splitlines()) == 7

    matrix = tmp_path / "phonemes.csv"
    matrix.write_text(",fr,de,en,es\nfr,1,.5,.4,.9\nde,.5,1,.8,.3\nen,.4,.8,1,.2\nes,.9,.3,.2,1\n")
    result = run_json(capsys, "masks", "correlate", *paths, "--labels", "es,en,de,fr", "--matrix", matrix)
    assert set(result["groups"]) == {"0", "1", "total"} and result["groups"]["total"]["pairs"] == 6
    assert -1 <= result["pearson"] <= 1 and result["pearson"] == result["groups"]["total"]["pearson"]
    code, _, err = run(capsys, "masks", "correlate", *paths, "--labels", "es,en,de,it", "--matrix", matrix)
    assert code == 2 and "phonemes.csv: no column labelled 'it'" in err


def test_export_bakes_a_mask_into_plain_weights(checkpoints, tmp_path, capsys):
    from fairseq_subnets.core.maskfile import load_mask_file
    from fairseq_subnets.plugin.formats.checkpoints import load_checkpoint

    mask_path, exported = tmp_path / "m.st", tmp_path / "plain.pt"
    run_json(capsys, "prune", checkpoints[1], "--method", "global-l1", "--sparsity", 0.8, "--out", mask_path)
    code, out, err = run(capsys, "export", checkpoints[1], "--mask", mask_path, "--out", exported)
    assert code == 0, err
    state = load_checkpoint(str(exported))["model"]
    for name, mask in load_mask_file(str(mask_path)).masks.items():
        weight = state[f"w2v_encoder.w2v_model.{name}"]
        assert torch.count_nonzero(weight[~mask]) == 0 and torch.count_nonzero(weight[mask]) == int(mask.sum())


def test_bench_runs_both_methods_and_agrees(capsys):
    result = run_json(capsys, "bench", "prune", "--layers", "1", "--width", "64", "--ffn", "256")
    assert result["weights"] == 4 * 64 * 64 + 2 * 64 * 256
    assert result["ours"]["differing_ties"] == 0  # no exact ties among 49,152 Gaussian float32 weights
    assert result["bits_per_weight"] < 1.5  # tiny: the header dominates
    assert 0 < result["ours"]["union_ratio"] <= 1
    timing = result["ours"]["iou_timing"]
    assert (timing["reference"], timing["measured"]) == ("plain torch IOU", "stats.iou")
    assert len(timing["measured_s"]) == 3 and timing["ratio"] > 0
    assert list(result["mask_files"]) == ["0.1", "0.5", "0.9"]


def test_bench_times_mask_files_against_version_2_alone(capsys):
    code, out, err = run(capsys, "bench", "prune", "--only-mask-files", "--layers", "1", "--width", "64", "--ffn", "256")
    assert code == 0, err
    assert "global L1" not in out and "version 2 (raw bits)" in out and "s = 0.9: read (s)" in out
    result = run_json(capsys, "bench", "prune", "--only-mask-files", "--layers", "1", "--width", "64", "--ffn", "256")
    assert "ours" not in result
    costs = result["mask_files"]
    assert all(cost["write"]["reference"] == "version 2 (raw bits)" and cost["read"]["measured"] == "version 3"
               for cost in costs.values())
    assert all(costs[s]["bits_per_weight"]["version 3"] < costs[s]["bits_per_weight"]["version 2 (raw bits)"]
               for s in ("0.1", "0.9"))


def test_bench_mask_comparison_allows_only_ties_at_the_threshold():
    from fairseq_subnets.benchmarks.prune import differing_ties

    weights = {"w": torch.tensor([0.1, -0.5, 0.5, 0.9])}
    ours = {"w": torch.tensor([False, True, False, True])}
    tie_broken_the_other_way = {"w": torch.tensor([False, False, True, True])}
    assert differing_ties(weights, ours, ours) == 0
    assert differing_ties(weights, ours, tie_broken_the_other_way) == 2
    with pytest.raises(RuntimeError, match="beyond threshold ties"):
        differing_ties(weights, ours, {"w": torch.tensor([True, False, False, True])})
    with pytest.raises(RuntimeError, match="ours keeps 2 weights, torch.nn.utils.prune 3"):
        differing_ties(weights, ours, {"w": torch.tensor([False, True, True, True])})


@pytest.mark.parametrize("argv, message", [(["--sparsity", "1.5"], "sparsity must lie in (0, 1), got 1.5"),
                                           (["--width", "0"], "width must be positive, got 0")])
def test_bench_rejects_bad_settings_before_running(argv, message, capsys):
    code, _, err = run(capsys, "bench", "prune", "--quick", *argv)
    assert code == 2 and message in err
