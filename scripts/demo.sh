#!/usr/bin/env bash
# The demo behind `make demo`: synthetic data -> train -> eval -> predict, on the CPU.
set -euo pipefail
BIN=${BIN:-.venv/bin}
export NO_ALBUMENTATIONS_UPDATE=1
start=$(date +%s)

[ -d data/synth/images ] || "$BIN/nailseg" data synth data/synth --n 240 --seed 0
[ -d data/synth-unseen/images ] || "$BIN/nailseg" data synth data/synth-unseen --n 6 --seed 12345 --quiet

log=$(mktemp)
"$BIN/nailseg" train configs/demo-cpu.yaml "$@" | tee "$log"
run=$(tail -n 1 "$log")
rm -f "$log"

"$BIN/nailseg" eval "$run" --split test --quiet
"$BIN/nailseg" predict "$run" data/synth-unseen/images --out "$run/predict-unseen" --quiet

iou=$("$BIN/python" -c "import json,sys; print(f\"{json.load(open(sys.argv[1]))['iou']:.3f}\")" "$run/eval.json")
cat <<MSG

Demo finished in $(( $(date +%s) - start )) s.
  run folder:        $run
  test IoU:          $iou (eval.json, at each image's original resolution)
  metrics per epoch: $run/metrics.jsonl
  summary:           $run/summary.json
  TensorBoard:       $BIN/tensorboard --logdir $run/tb
  val overlays:      $run/predictions/
  unseen images:     $run/predict-unseen/
MSG
