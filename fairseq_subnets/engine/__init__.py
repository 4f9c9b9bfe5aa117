"""The method-neutral experiment engine: what every method's grid runs on.

- `cells.py`: a Cell (name, folder, work, configuration, input files, dependencies) and its
  content-digest cache key (`digests.py`);
- `scheduler.py`: `run_cells`, dependency order, N at a time, finished cells skipped, per-cell
  bookkeeping and failure logs;
- `executors.py`: local threads (`--jobs N`, the default), or submitit on this machine or Slurm;
- `results.py`: results.csv / results.json, written atomically;
- `report.py`: tables, Markdown/CSV writers, line plots, heatmaps, scatter plots and report.md for a
  method's views.

The engine knows nothing of languages, sparsities or masks; see fairseq_subnets/methods/README.md.
"""
