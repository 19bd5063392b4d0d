#!/usr/bin/env bash
# Hyperspectral prospecting end to end, offline on a CPU (make spectral-demo):
#   synthetic GF-5B scenes (330 bands, mixed from real USGS splib07 spectra) → zh/en Q/A (alteration yes/no,
#   main alteration mineral, mineralisation probability) → tiny Qwen3-VL → eval before (RGB rendering) →
#   SFT with a trained spectral projector (N bands → RGB in front of the vision tower) → eval after
#   (cubes through the projector) → before/after report → VLM vs SAM on the held-out scenes → a large scene:
#   tiled VLM mineralisation-probability GeoTIFF + PNG, and the SAM mineral map of the same cube.
# Usage: bash scripts/demo_spectral.sh [OUT_DIR]
# Settings: GEOVL_HS_SCENES (300), GEOVL_HS_STEPS (600), GEOVL_HS_MAP_SIZE (256 px).
set -euo pipefail
D="${1:-spectral_out}"
SCENES="${GEOVL_HS_SCENES:-300}"
STEPS="${GEOVL_HS_STEPS:-600}"
MAP_SIZE="${GEOVL_HS_MAP_SIZE:-256}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
rm -rf "$D"; mkdir -p "$D"
start=$(date +%s)
step() { echo; echo "== [$(( $(date +%s) - start ))s] $*"; }
EVAL=(--forced-choice --batch-size 16 --no-progress --max-new-tokens 8)

step "1/8 synthesise GF-5B scenes: 330 bands from USGS splib07 spectra, zh + en questions / 合成高光谱场景"
geovl spectral synth --out "$D/data" --scenes "$SCENES" --sensor gf5b --size 64 --seed 0 --formats envi --no-progress >/dev/null

step "2/8 build a tiny Qwen3-VL (random weights, real architecture) / 构建微型模型"
geovl model tiny --family qwen3-vl --out "$D/model" --hidden 128 --seed 0

step "3/8 evaluate before fine-tuning (the false-colour rendering) / 微调前评估"
geovl eval --model "$D/model" --data "$D/data/test.parquet" --out "$D/before.jsonl" "${EVAL[@]}"

step "4/8 fine-tune with the spectral projector: all 330 bands reach the model / 光谱投影层 + 监督微调"
geovl train sft "$HERE/recipes/hyperspectral-tiny.yaml" model="$D/model" train_data="$D/data/train.parquet" \
  output_dir="$D/run" max_steps="$STEPS" progress_bar=false report_to=[] 2>&1 | grep -vE "^(Loading|Writing)" | grep -E "^(model|train samples|spectral|  |\{'loss'|done)" || true
[ -f "$D/run/final/spectral_projector.safetensors" ] || { echo "demo_spectral: training did not produce $D/run/final" >&2; exit 1; }

step "5/8 evaluate after fine-tuning (cubes through the projector) / 微调后评估"
geovl eval --model "$D/run/final" --data "$D/data/test.parquet" --out "$D/after.jsonl" "${EVAL[@]}"

step "6/8 before/after comparison / 前后对比"
geovl compare "$D/before.jsonl" "$D/after.jsonl" --names before,after --out "$D/report"
for f in before after; do geovl rewards score --predictions "$D/$f.jsonl" --compact > "$D/$f.rewards.json"; done
python - "$D" <<'PY'
import json, sys
from pathlib import Path

d = Path(sys.argv[1])
b, a = (json.loads((d / f"{k}.rewards.json").read_text())["by_qtype"] for k in ("before", "after"))
print("mean rule reward (the GRPO rewards: exact yes/no, choice, number within 2 % else exp(-5·rel. error)) / 平均规则奖励:")
for q in sorted(a):
    print(f"  {q:<8} before {b.get(q, {}).get('mean_rs_reward', 0):.3f} → after {a[q]['mean_rs_reward']:.3f}")
PY

step "7/8 the fine-tuned model vs the spectral angle mapper on the held-out scenes / 与光谱角制图对比"
geovl spectral compare "$D/data" --predictions "$D/after.jsonl" --out "$D/vlm_vs_sam.json" --md "$D/vlm_vs_sam.md"

step "8/8 a ${MAP_SIZE}×${MAP_SIZE} px scene: tiled VLM probability map and SAM mineral map / 成矿概率图"
geovl spectral synth --out "$D/big" --scenes 1 --size "$MAP_SIZE" --seed 99 --split map=1 --formats envi,geotiff --no-progress >/dev/null
CUBE="$(ls "$D"/big/scenes/*/cube.tif | head -n 1)"
geovl spectral vlm-map "$CUBE" --model "$D/run/final" --out "$D/map/probability.tif" --tile 64 --overlap 16 --no-progress
geovl spectral map "$CUBE" --method sam --out "$D/map/minerals.tif" --no-progress >/dev/null
python - "$CUBE" "$D/map/probability.tif" <<'PY'
import sys
from pathlib import Path

import numpy as np
import rasterio

truth = Path(sys.argv[1]).with_name("probability.tif")
with rasterio.open(sys.argv[2]) as a, rasterio.open(truth) as b, rasterio.open(sys.argv[1]) as c:
    p, t = a.read(1), b.read(1)
    assert a.crs == c.crs and a.transform == c.transform, "the map lost the cube's georeference"
    ok = np.isfinite(p)
    print(f"probability map {a.width}×{a.height} px, {a.crs}: {ok.mean():.0%} of pixels mapped; "
          f"mean |map − true pixel probability| = {np.abs(p[ok] - t[ok]).mean():.3f} "
          f"(a constant map at the true mean would score {np.abs(t - t.mean()).mean():.3f})")
PY
echo
echo "spectral demo finished in $(( $(date +%s) - start ))s; reports: $D/report/report.html, $D/vlm_vs_sam.md, maps in $D/map/"
