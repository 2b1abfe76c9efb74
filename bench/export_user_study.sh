#!/bin/sh
# Copy a finished user-level sweep's small outputs into docs/data/users-study/NAME (issue 24):
# the sweep's plan, logs, `crepe report` outputs, and per run config.json, summary.json,
# metrics.jsonl, model.json. Never checkpoint.pt or model.pt (weights; an unfinished run's
# checkpoint holds its generator states).   usage: sh bench/export_user_study.sh runs/SWEEP NAME
set -eu
src=$1; dst=docs/data/users-study/$2
mkdir -p "$dst"
cp "$src/sweep.json" "$dst/"
[ -d "$src/report" ] && { mkdir -p "$dst/report"; cp "$src"/report/*.md "$src"/report/*.csv "$dst/report/"; cp "$src"/report/*.png "$dst/report/" 2>/dev/null || true; }
[ -d "$src/logs" ] && { mkdir -p "$dst/logs"; cp "$src"/logs/*.log "$dst/logs/"; }
for run in "$src"/*/; do
  [ -f "$run/summary.json" ] || continue
  r=$dst/runs/$(basename "$run"); mkdir -p "$r"
  for f in config.json summary.json metrics.jsonl model.json pretrain.json; do [ -f "$run/$f" ] && cp "$run/$f" "$r/"; done
done
du -sh "$dst"
