"""The experiment engine: what every experiment's grid runs on.

Method-neutral core:
- `cells.py`: a Cell (name, folder, work, input files, dependencies) and its cache key, derived from
  what its work really receives (`digests.py`, `hydra_configs.py`);
- `scheduler.py`: `run_cells`, dependency order, N at a time, finished cells skipped, per-cell
  bookkeeping and failure logs, and the results of cells already finished (`cached_results`);
- `executors.py`: local threads (`--jobs N`, the default), or submitit on this machine or Slurm;
- `runners.py`: what a cell's work runs fairseq through (the stock commands, or a test's stand-in);
- `results.py`: results.csv / results.json, written atomically;
- `report.py`: reading results files, tables, Markdown/CSV writers, line plots, heatmaps, scatter
  plots and report.md for an experiment's views.

What every grid on a corpus and one pretrained model shares:
- `grid_file.py`: reading a grid file and checking it completely before anything runs;
- `grid_plan.py`: the corpus plan (the pretraining cell, manifests, Hydra configs) and the shared
  work (pretraining, decoding, pruning into a mask file);
- `grid_run.py`: running a grid and writing its results files.

A paper's folder (fairseq_subnets/experiments/<paper>/) holds only its spec, cells and views; see
fairseq_subnets/experiments/README.md.
"""
