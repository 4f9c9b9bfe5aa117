"""Benchmarks: every speed or memory claim of the README, measured as a ratio against a named
reference in the same run, so that the claim holds on any machine and unit tests never time.

  prune        global L1 pruning against torch.nn.utils.prune, mask files, IOU (pure torch)
  train_step   fixed-mask training steps and baked decoding against unmasked / stock models (fairseq)
  data_check   `data check` on thousands of files against reading their headers alone (no torch)
  rehearsal    the whole workflow at XLS-R 300M size, wall time and peak memory per step (absolute,
               one child process per step: a rehearsal of this machine, not a ratio)
  gpu_check    every training mode in fp16 at XLS-R 300M shape on a GPU: speed against stock
               fine-tuning, peak GPU memory, decode, export, pruned weights exactly 0 (one JSON)
  cli_startup  `fairseq-subnets --help` against `python -c pass` of the same interpreter (no torch)

Importing this package imports none of them, so each keeps its module's dependencies.
"""
