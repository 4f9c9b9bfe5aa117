"""Pure-torch mask core (never imports fairseq, so it is usable and testable without it).

  targets     names of the prunable wav2vec2 encoder matrices; module-kind / layer selection
  pruning     global / per-matrix L1, block L2, random criteria with exact kept counts
  parametrize masks on live modules through the weight (torch.nn.utils.parametrize); baking
  maskfile    bit-packed safetensors mask files with metadata and integrity checks
  stats       union / intersection / difference / complement, sparsity, IOU, union ratio,
              cosine similarity, pairwise matrices and their correlation with a user matrix
"""
