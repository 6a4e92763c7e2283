#!/usr/bin/env bash
# On a machine with a GPU or TPU: the accelerator build of jax (installed when the one at hand sees only the
# CPU), then bench/accelerator_check.py within 10 minutes. Usage, from anywhere:
#
#   bash bench/accelerator_check.sh [--sizes 8,32,128] [--steps 16]
#
# Offline machines: put the jax wheels for the accelerator in .whl/ at the repository root first (they are
# installed from there, nothing is fetched). SFace's timings need its ONNX file under $OPOMJAX_SHARED/models/
# (else they are skipped, saying so); IR-50 runs with random weights (speed does not depend on them).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
platform="$("$PY" -c 'import jax; print(jax.devices()[0].platform)' 2>/dev/null || echo none)"
if [ "$platform" = cpu ] || [ "$platform" = none ]; then
  if command -v nvidia-smi > /dev/null 2>&1; then extra=cuda12
  elif [ -e /dev/accel0 ] || [ -e /dev/vfio/0 ] || [ -n "${TPU_NAME:-}" ]; then extra=tpu
  else echo "no GPU or TPU on this machine (jax sees: $platform): nothing to check" >&2; exit 2
  fi
  if [ -d .whl ]; then "$PY" -m pip install -q --no-index --find-links .whl "jax[$extra]"
  else "$PY" -m pip install -q "jax[$extra]"
  fi
fi
export PYTHONPATH="$PWD:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}"
timeout 600 "$PY" bench/accelerator_check.py "$@"
