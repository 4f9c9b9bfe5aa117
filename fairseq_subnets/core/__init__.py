"""Pure-torch core (never imports fairseq, so it is usable and testable without it).

  targets     names of the prunable wav2vec2 encoder matrices; module-kind / layer selection
  pruning     global / per-matrix L1, block L2, random criteria with exact kept counts
  transforms  the stack of named weight transforms on one weight, the transform base classes, the
              kind registry, the framework's own kinds (fixed masks with kept-only storage, dense
              masks), per-language selection, transform plans, regularisers
  parametrize transforms on whole models and on bare state dicts: applying mask sets, reading
              masks back, baking for export, upgrading 0.2 checkpoints
  holding     holding chosen entries of tensors bit-identical through an optimizer step
  maskfile    compressed safetensors mask files with metadata and integrity checks
  compact     masked matrices as coded masks and kept float32 values in a checksummed state dict
              (the compact checkpoint's state), decoded to CSR or dense
  stats       union / intersection / difference / complement, sparsity, IOU, union ratio,
              cosine similarity, pairwise matrices and their correlation with a user matrix

Each technique's own weight-transform kinds and pure-torch rules (learned masks' score masks and
initial scores, pathways' per-language masks, the iterative pruning schedule, each tuner's
adapters), its config keys and its hooks are in its folder of `fairseq_subnets.techniques`
(the tuners one folder per method in `techniques/tuners/`); importing the folder's package
registers its kinds. The core imports no technique.
"""
