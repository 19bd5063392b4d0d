#!/usr/bin/env bash
# geovl GPU acceptance run: tiny models of all three families on one CUDA GPU, one JSON line per check
# (check, status pass|fail|skip, seconds, peak_gpu_mib, error|reason), also written to --out. See docs/gpu-check.md.
#
#   scripts/gpu_check.sh [--device cuda|cpu] [--only a,b] [--out FILE] [--wheels DIR] [--python PY]
#
# --wheels DIR: a machine without a package index: the carried wheels/sdists in DIR are installed with
#   pip install --no-index --no-deps --target into a temporary folder put on PYTHONPATH
#   (torch, transformers, peft, … stay as they are; nothing is installed globally).
# --device cpu: the dry run of the same checks on a CPU (the CUDA-only ones print skip).
# Exit: 0 all ran checks passed (skips allowed), 1 a check failed, 2 bad usage / no CUDA device.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
device=cuda only="" out="gpu_check.jsonl" wheels="" py="${PYTHON:-python3}"
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device="$2"; shift 2 ;;
    --only) only="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --wheels) wheels="$2"; shift 2 ;;
    --python) py="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
work="$(mktemp -d "${TMPDIR:-/tmp}/geovl-gpu-check.XXXXXX")"
site=""
if [ -n "$wheels" ]; then
  [ -d "$wheels" ] || { echo "gpu_check.sh: --wheels $wheels is not a folder" >&2; exit 2; }
  # into a private folder on PYTHONPATH (a --system-site-packages venv made from a venv would not see that venv's
  # torch): exactly the carried files, --no-deps, so nothing the machine already has is replaced;
  # --no-build-isolation: an sdist (deepspeed) builds against the installed torch
  site="$work/site"
  shopt -s nullglob
  carried=("$wheels"/*.whl "$wheels"/*.tar.gz)
  if [ ${#carried[@]} -gt 0 ]; then
    "$py" -m pip install --quiet --no-index --no-deps --no-build-isolation --target "$site" "${carried[@]}" >&2 \
      || echo "gpu_check.sh: some carried wheels did not install; their checks will say skip" >&2
  fi
fi
export PYTHONPATH="$root/src${site:+:$site}${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false
[ "$device" = cpu ] && export CUDA_VISIBLE_DEVICES="" DS_ACCELERATOR=cpu
exec "$py" "$here/gpu_check.py" --device "$device" --only "$only" --out "$out" --work "$work/run"
