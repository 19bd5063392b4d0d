#!/usr/bin/env bash
# The main job, offline on a CPU: synthetic county scenes → dataset → tiny Qwen2.5-VL →
# eval before → supervised fine-tuning → eval after → before/after report → stage 2: GRPO with rule
# rewards on count + area questions → the stage-2 table (scripts/demo_grpo.sh).
# Usage: bash scripts/demo.sh [OUT_DIR]   (make demo runs it with the venv on PATH)
set -euo pipefail
D="${1:-demo_out}"
SCENES="${GEOVL_DEMO_SCENES:-900}"
STEPS="${GEOVL_DEMO_STEPS:-800}"
MAXPX=50176   # 224×224 px: 64 visual tokens per image (Qwen2.5-VL: one token per 28×28 px)
export GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
rm -rf "$D"; mkdir -p "$D"
start=$(date +%s)
step() { echo; echo "== [$(( $(date +%s) - start ))s] $*"; }

step "1/8 synthesise county scenes (two dates each; zh + en questions) / 合成县域场景"
geovl data synth --out "$D/county" --scenes "$SCENES" --size 224 --seed 0 \
  --tasks presence,count --presence-classes water,forest,cropland,bare --questions-per-scene 6 --split train=0.85,test=0.15 --format jsonl --no-progress >/dev/null

step "2/8 convert to the dataset format (every record validated; rejects listed beside the output) / 转换数据"
geovl data convert --from messages --input "$D/county/train.jsonl" --output "$D/data/train.parquet"
geovl data convert --from messages --input "$D/county/test.jsonl" --output "$D/data/test.parquet"

step "3/8 inspect: visual tokens and sequence lengths under the pixel bounds / 数据检查"
geovl data inspect "$D/data/train.parquet" --family qwen2.5-vl --min-pixels 3136 --max-pixels $MAXPX --max-tokens 256

step "4/8 build a tiny Qwen2.5-VL (random weights, real architecture) / 构建微型模型"
geovl model tiny --family qwen2.5-vl --out "$D/model" --hidden 128 --seed 0 --max-pixels $MAXPX

step "5/8 evaluate before fine-tuning / 微调前评估"
geovl eval --model "$D/model" --data "$D/data/test.parquet" --out "$D/before.jsonl" --forced-choice --batch-size 32

step "6/8 supervised fine-tuning / 监督微调"
geovl train sft recipes/demo-county-tiny.yaml model="$D/model" train_data="$D/data/train.parquet" \
  output_dir="$D/run" max_steps="$STEPS" max_pixels=$MAXPX

step "7/8 evaluate after fine-tuning / 微调后评估"
geovl eval --model "$D/run/final" --data "$D/data/test.parquet" --out "$D/after.jsonl" --forced-choice --batch-size 32

step "8/8 before/after comparison / 前后对比"
geovl compare "$D/before.jsonl" "$D/after.jsonl" --names before,after --out "$D/report"
echo "stage 1 (SFT) finished in $(( $(date +%s) - start ))s; report: $D/report/report.html (also report.md)"

# stage 2: GRPO with rule rewards on count + area questions; prints the stage-2 table (per-type accuracy and
# mean reward before/after GRPO) and fails if presence (yes/no) accuracy dropped. GEOVL_DEMO_GRPO=0 skips it.
if [ "${GEOVL_DEMO_GRPO:-1}" != "0" ]; then
  echo
  echo "== [$(( $(date +%s) - start ))s] stage 2: GRPO / 第二阶段：强化学习"
  bash "$(dirname "${BASH_SOURCE[0]}")/demo_grpo.sh" "$D"
fi
echo
echo "demo finished in $(( $(date +%s) - start ))s; reports: $D/report/report.html (SFT), $D/grpo/report_count_area/report.html (GRPO)"
