#!/usr/bin/env bash
# The prepared GPU check (`fairseq-subnets bench gpu`, docs/benchmarks.md) under a hard time limit,
# for a lent GPU machine that has this working tree and a Python environment but no installed
# package. Usage:
#   scripts/gpu_check.sh OUT [bench gpu options]      e.g. scripts/gpu_check.sh /tmp/gpu_check
# PYTHON: the interpreter (default: .venv/bin/python, else python3); fairseq-hydra-train and
# fairseq-generate must lie beside it or on PATH. GPU_CHECK_LIMIT_S: the hard limit (default 540:
# the check budgets 480 s for starting trainings; the last one, the decodes and the report need the
# rest). The report is OUT/gpu_check.json, rewritten after every step, so a run stopped by the limit
# keeps what it measured; OUT/gpu_check_logs.tgz holds every fairseq log. Exit status: the check's
# (0 every mode ok, 1 a mode failed or was skipped, 2 refused), 3 a missing package, 124 the limit.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: scripts/gpu_check.sh OUT [fairseq-subnets bench gpu options]}
shift
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

# Imported here (a few seconds) so that a missing or broken package costs one line, not a lease:
# the command itself would stop in an import traceback. data_utils_fast is fairseq's compiled
# batching code, imported only when the first batches are made.
"$PY" -c '
import importlib, sys
needed = ("torch", "numpy", "scipy", "soundfile", "safetensors", "yaml", "editdistance", "bitarray", "omegaconf",
          "hydra", "fairseq", "fairseq.data.data_utils_fast", "fairseq_cli.hydra_train", "fairseq_cli.generate")
failed = []
for name in needed:
    try:
        importlib.import_module(name)
    except Exception as error:
        failed.append(f"{name} ({type(error).__name__}: {error})")
if failed:
    listed = "; ".join(failed)
    sys.exit(f"gpu_check.sh: {sys.executable} cannot import {listed} (see docs/benchmarks.md, the GPU check)")
' || exit 3

# Not `python -m fairseq_subnets.cli.main`: run as __main__, its error class would be a second copy
# that the commands' modules do not raise, and refusals would end in a traceback.
timeout --kill-after=15 "${GPU_CHECK_LIMIT_S:-540}" "$PY" -c \
  'import sys; from fairseq_subnets.cli.main import main; sys.exit(main())' bench gpu --out "$OUT" "$@"
status=$?
[ -d "$OUT/runs" ] && tar -czf "$OUT/gpu_check_logs.tgz" -C "$OUT" runs
exit $status
