#!/usr/bin/env bash
# Grounding on a CPU: synthetic scenes with exact building boxes → tiny Qwen2.5-VL → eval before →
# SFT (boxes rendered in the family's own convention) → eval after → grounding scores before/after,
# counts read from boxes vs direct count answers on the same scenes, and a picture with boxes.
# Usage: bash scripts/demo_grounding.sh [OUT_DIR]   (make grounding-demo runs it with the venv on PATH)
set -euo pipefail
D="${1:-grounding_out}"
SCENES="${GEOVL_GROUNDING_SCENES:-300}"
LIMIT="${GEOVL_GROUNDING_EVAL:-120}"   # test samples evaluated (the first ones: whole scenes, both questions)
STEPS="${GEOVL_GROUNDING_STEPS:-300}"
MAXPX=50176
export GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
rm -rf "$D"; mkdir -p "$D"
start=$(date +%s)
step() { echo; echo "== [$(( $(date +%s) - start ))s] $*"; }

step "1/6 synthesise scenes: 'locate every building' (boxes) + 'how many buildings' (count), zh + en / 合成场景"
geovl data synth --out "$D/data" --scenes "$SCENES" --size 224 --seed 0 --tasks box_buildings,count \
  --questions-per-scene 4 --max-buildings 3 --split train=0.9,test=0.1 --no-progress >/dev/null

step "2/6 build a tiny Qwen2.5-VL (random weights, real architecture) / 构建微型模型"
geovl model tiny --family qwen2.5-vl --out "$D/model" --hidden 128 --seed 0 --max-pixels $MAXPX

step "3/6 evaluate before fine-tuning / 微调前评估"
geovl eval --model "$D/model" --data "$D/data/test.parquet" --out "$D/before.jsonl" --batch-size 32 --max-new-tokens 150 --limit "$LIMIT"

step "4/6 supervised fine-tuning / 监督微调"
geovl train sft recipes/demo-grounding-tiny.yaml model="$D/model" train_data="$D/data/train.parquet" \
  output_dir="$D/run" max_steps="$STEPS" max_pixels=$MAXPX

step "5/6 evaluate after fine-tuning / 微调后评估"
geovl eval --model "$D/run/final" --data "$D/data/test.parquet" --out "$D/after.jsonl" --batch-size 32 --max-new-tokens 150 --limit "$LIMIT"

step "6/6 scores, counts from boxes vs direct counts, picture / 评分与对比"
geovl score "$D/before.jsonl" --out "$D/before.metrics.json"
geovl score "$D/after.jsonl" --out "$D/after.metrics.json"
geovl compare "$D/before.jsonl" "$D/after.jsonl" --names before,after --out "$D/report" --data "$D/data/test.parquet"
python -m geovl.evaluate.grounding_demo "$D"
echo "grounding demo finished in $(( $(date +%s) - start ))s; summary: $D/grounding_summary.json, picture: $D/boxes.png"
