"""Mask algebra and statistics against hand-computed tiny examples."""
import math

import numpy as np
import pytest
import torch

from fairseq_subnets.core import stats

Q0, FC0, Q1 = ("encoder.layers.0.self_attn.q_proj.weight", "encoder.layers.0.fc1.weight",
               "encoder.layers.1.self_attn.q_proj.weight")


def masks(q0, fc0, q1):
    return {Q0: torch.tensor(q0, dtype=torch.bool), FC0: torch.tensor(fc0, dtype=torch.bool),
            Q1: torch.tensor(q1, dtype=torch.bool)}


A = masks([1, 1, 0, 0], [1, 0, 1, 0, 1, 0], [1, 1, 1, 1])
B = masks([1, 0, 1, 0], [1, 1, 1, 0, 0, 0], [0, 0, 0, 0])
C = masks([0, 0, 0, 1], [0, 0, 0, 0, 0, 1], [1, 0, 0, 0])


def as_lists(mask_set):
    return {name: mask.int().tolist() for name, mask in mask_set.items()}


def test_algebra():
    assert as_lists(stats.union(A, B)) == as_lists(masks([1, 1, 1, 0], [1, 1, 1, 0, 1, 0], [1, 1, 1, 1]))
    assert as_lists(stats.intersection(A, B)) == as_lists(masks([1, 0, 0, 0], [1, 0, 1, 0, 0, 0], [0, 0, 0, 0]))
    assert as_lists(stats.difference(A, B)) == as_lists(masks([0, 1, 0, 0], [0, 0, 0, 0, 1, 0], [1, 1, 1, 1]))
    assert as_lists(stats.complement(B)) == as_lists(masks([0, 1, 0, 1], [0, 0, 0, 1, 1, 1], [1, 1, 1, 1]))
    assert as_lists(stats.union(A, B, C)) == as_lists(masks([1, 1, 1, 1], [1, 1, 1, 0, 1, 1], [1, 1, 1, 1]))
    assert A[Q0].tolist() == [True, True, False, False]  # inputs untouched


def test_sparsity_total_per_layer_and_kind():
    assert stats.sparsity(A) == pytest.approx(1 - 9 / 14)
    assert stats.sparsity_by(A, "layer") == pytest.approx({"0": 1 - 5 / 10, "1": 0.0, "total": 1 - 9 / 14})
    assert stats.sparsity_by(B, "kind") == pytest.approx({"q": 1 - 2 / 8, "fc1": 0.5, "total": 1 - 5 / 14})
    assert stats.kept_counts(B, "matrix") == {Q0: (2, 4), FC0: (3, 6), Q1: (0, 4), "total": (5, 14)}


def test_iou_total_and_per_group():
    # A & B: 1 + 2 + 0 = 3 kept by both; A | B: 3 + 4 + 4 = 11
    assert stats.iou(A, B) == pytest.approx(3 / 11)
    assert stats.compare_by(A, B, "iou", "layer") == pytest.approx({"0": 3 / 7, "1": 0.0, "total": 3 / 11})
    assert stats.compare_by(A, B, "iou", "kind") == pytest.approx({"q": 1 / 7, "fc1": 2 / 4, "total": 3 / 11})
    assert stats.iou(A, A) == 1.0


def test_cosine_per_layer():
    # layer 0: |A| = 5, |B| = 5, both = 3
    assert stats.cosine_by_layer(A, B) == pytest.approx({"0": 3 / 5, "1": 0.0, "total": 3 / math.sqrt(9 * 5)})


def test_empty_masks_are_identical_to_each_other():
    empty = masks([0] * 4, [0] * 6, [0] * 4)
    assert stats.iou(empty, empty) == 1.0 and stats.compare_by(empty, A, "cosine")["total"] == 0.0


def test_union_ratio():
    assert stats.union_ratio([A, B]) == pytest.approx(11 / 14)
    assert stats.union_ratio([A, B, C]) == pytest.approx(13 / 14)
    assert stats.union_ratio([B]) == pytest.approx(5 / 14)


def test_pairwise_matrices():
    matrices = stats.pairwise([A, B, C], "iou", "layer")
    assert list(matrices) == ["0", "1", "total"]
    total = matrices["total"]
    assert np.allclose(np.diag(total), 1.0) and np.allclose(total, total.T)
    assert total[0, 1] == pytest.approx(3 / 11)
    assert total[0, 2] == pytest.approx(1 / 11)
    assert total[1, 2] == pytest.approx(0 / 8)


def test_mismatched_mask_sets_name_the_weight():
    other = dict(A)
    other[Q0] = torch.ones(5, dtype=torch.bool)
    with pytest.raises(ValueError, match=rf"mask set 2: {Q0} has shape \(5,\) but"):
        stats.iou(A, other)
    del other[Q0]
    with pytest.raises(ValueError, match=f"mask set 2: no mask for {Q0}, which mask set 1 has"):
        stats.union(A, other)
    with pytest.raises(ValueError, match=f"mask set 2: mask for {Q0}, which mask set 1 lacks"):
        stats.union(other, A)


def test_correlation_pearson_and_spearman_over_the_upper_triangle():
    a = np.array([[1, 0.9, 0.5, 0.1], [0.9, 1, 0.4, 0.2], [0.5, 0.4, 1, 0.3], [0.1, 0.2, 0.3, 1]])
    b = np.array([[9, 1, 2, 3], [1, 9, 4, 5], [2, 4, 9, 6], [3, 5, 6, 9]])  # x: .9 .5 .1 .4 .2 .3; y: 1..6
    x, y = np.array([0.9, 0.5, 0.1, 0.4, 0.2, 0.3]), np.arange(1.0, 7.0)
    result = stats.correlate(a, b)
    assert result["pearson"] == pytest.approx(np.corrcoef(x, y)[0, 1])
    ranks = np.array([6, 5, 1, 4, 2, 3.0])
    assert result["spearman"] == pytest.approx(np.corrcoef(ranks, y)[0, 1])
    assert result["pairs"] == 6
    tied = stats.correlate(np.array([[1, 1, 1], [1, 1, 2], [1, 2, 1]]), np.array([[0, 1, 2], [1, 0, 3], [2, 3, 0]]))
    assert tied["spearman"] == pytest.approx(np.corrcoef([1.5, 1.5, 3], [1, 2, 3])[0, 1])
    assert math.isnan(stats.correlate(np.ones((3, 3)), b[:3, :3])["pearson"])


def test_labelled_csv_matrix_is_reordered_and_errors_name_file_and_label(tmp_path):
    path = tmp_path / "phonemes.csv"
    path.write_text(",es,en,de\nde,1,0.2,0.3\nen,0.2,1,0.4\nes,0.3,0.5,1\n")
    assert stats.read_labelled_matrix(str(path), ["en", "de"]).tolist() == [[1, 0.4], [0.2, 0.3]]
    with pytest.raises(ValueError, match="phonemes.csv: no column labelled 'fr'"):
        stats.read_labelled_matrix(str(path), ["en", "fr"])
    path.write_text(",es,en\nes,1,0.5\n")
    with pytest.raises(ValueError, match="phonemes.csv: no row labelled 'en'"):
        stats.read_labelled_matrix(str(path), ["es", "en"])
    path.write_text(",es,en\nes,1,x\nen,1,1\n")
    with pytest.raises(ValueError, match="phonemes.csv: row 'es', column 'en': 'x' is not a number"):
        stats.read_labelled_matrix(str(path), ["es", "en"])
