"""Pure-torch core (never imports fairseq, so it is usable and testable without it).

  targets     names of the prunable wav2vec2 encoder matrices; module-kind / layer selection
  pruning     global / per-matrix L1, block L2, random criteria with exact kept counts
  transforms  the stack of named weight transforms on one weight (fixed, dense, learned and
              per-language masks; adaptations), the kind registry, transform plans, regularisers
  parametrize transforms on whole models and on bare state dicts: applying mask sets, reading
              masks back, baking for export, upgrading 0.2 checkpoints
  maskfile    compressed safetensors mask files with metadata and integrity checks
  stats       union / intersection / difference / complement, sparsity, IOU, union ratio,
              cosine similarity, pairwise matrices and their correlation with a user matrix
  scores      initial scores of learned masks (S3-Router's ori, wmi, ri)
  pathways    holding weights outside the active language's masks through an optimizer step
  iterative_pruning  the IMP / LTH schedule, the rewind point, group lasso and its lambda rules

The techniques that use them, and the fairseq keys that switch them on, are in
`fairseq_subnets.techniques`; the parameter-efficient tuners, with their weight transforms, are
one folder per method in `techniques/tuners/`.
"""
