"""Benchmarks: every speed or memory claim of the README, measured as a ratio against a named
reference in the same run, so that the claim holds on any machine and unit tests never time.

  prune        global L1 pruning against torch.nn.utils.prune, mask files, IOU (pure torch)
  train_step   fixed-mask training steps and baked decoding against unmasked / stock models (fairseq)
  data_check   `data check` on thousands of files against reading their headers alone (no torch)
  rehearsal    the whole workflow at XLS-R 300M size, wall time and peak memory per step (absolute,
               one child process per step: a rehearsal of this machine, not a ratio)
  cli_startup  `fairseq-subnets --help` against `python -c pass` of the same interpreter (no torch)

Importing this package imports none of them, so each keeps its module's dependencies.
"""
