#!/usr/bin/env bash
# Crash safety of vit train, with real processes: a run killed with SIGKILL mid-epoch resumes
# from its last checkpoint and ends exactly as an uninterrupted run (same steps, same per-epoch
# losses, no epoch lost or repeated in the log); SIGTERM checkpoints and stops; a file-size
# limit hit while saving leaves the previous files intact; an unreadable image is skipped.
# usage: test_crash_resume.sh path/to/vit path/to/tests/fixtures
set -u
vit=$1
data=$2/stripes
tmp=$(mktemp -d)
chmod 755 "$tmp"
trap 'rm -rf "$tmp"' EXIT
passed=0 failed=0
ok() { passed=$((passed + 1)); }
fail() { failed=$((failed + 1)); echo "FAIL: $*"; }

# 40 epochs of 7 steps: long enough to be killed in the middle, a few seconds in release.
model=(--data "$data/train" --model vit_fmnist_patch4 --img-size 16 --patch-size 4 --embed-dim 32
       --depth 2 --num-heads 2 --batch-size 16 --crop pad --pad 2 --hflip 0.5 --seed 5
       --lr 3e-3 --warmup-epochs 1 --no-progress)
recipe=("${model[@]}" --epochs 40)

# The per-epoch lines of a log, without their timings: epoch, step, loss, accuracy, lr.
curve() {
  python3 -c '
import json, sys
for line in open(sys.argv[1]):
    j = json.loads(line)
    print(j["epoch"], j["step"], repr(j["train_loss"]), repr(j["train_acc"]), repr(j["lr"]))
' "$1"
}

# Waits until FILE exists and LOG has at least N lines (or the process ended); 0 if so.
wait_for() {
  local pid=$1 file=$2 log=$3 n=$4
  for _ in $(seq 1 3000); do
    if [ -f "$file" ] && [ -f "$log" ] && [ "$(wc -l <"$log")" -ge "$n" ]; then return 0; fi
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.02
  done
  return 1
}

# --- the uninterrupted reference -----------------------------------------------------------
"$vit" train "${recipe[@]}" --log "$tmp/a.log" --out "$tmp/a.safetensors" >"$tmp/a.out" 2>&1 \
  && ok || { fail "reference run"; sed 's/^/  /' "$tmp/a.out" | tail -5; }
# eval's JSON without the model's path: what the model computes.
metrics() { "$vit" eval --model "$1" --data "$data/val" --json | python3 -c '
import json, sys
j = json.load(sys.stdin)
j.pop("model", None)
print(json.dumps(j, sort_keys=True))'; }
metrics "$tmp/a.safetensors" >"$tmp/a.eval" || fail "eval a"

# --- SIGKILL mid-epoch, then --resume ----------------------------------------------------------
"$vit" train "${recipe[@]}" --checkpoint-every 3 --log "$tmp/b.log" --out "$tmp/b.safetensors" \
  >"$tmp/b.out" 2>&1 &
pid=$!
if wait_for "$pid" "$tmp/b.ckpt.safetensors" "$tmp/b.log" 3; then
  sleep 0.05  # somewhere inside an epoch, maybe inside a checkpoint write
  kill -KILL "$pid"
  wait "$pid" 2>/dev/null
  [ ! -f "$tmp/b.safetensors" ] && ok || fail "the killed run had already finished: make it longer"
  killed_at=$(wc -l <"$tmp/b.log")
  "$vit" train --data "$data/train" --resume "$tmp/b.ckpt.safetensors" --checkpoint-every 3 \
    --log "$tmp/b.log" --out "$tmp/b.safetensors" --no-progress >"$tmp/b2.out" 2>&1 \
    && ok || { fail "resume after SIGKILL"; sed 's/^/  /' "$tmp/b2.out" | tail -5; }
  if [ "$(curve "$tmp/a.log")" = "$(curve "$tmp/b.log")" ]; then
    ok
  else
    fail "the resumed run's curve differs from the uninterrupted one (killed after $killed_at epochs)"
    diff <(curve "$tmp/a.log") <(curve "$tmp/b.log") | head -6
  fi
  metrics "$tmp/b.safetensors" >"$tmp/b.eval"
  cmp -s "$tmp/a.eval" "$tmp/b.eval" && ok || fail "the resumed model evaluates differently"
  ls "$tmp" | grep -q '\.tmp' && ls "$tmp" | grep '\.tmp' | grep -qv "b.ckpt.safetensors.tmp$pid" \
    && fail "temporary files other than the killed write's are left: $(ls "$tmp" | grep '\.tmp')" || ok
else
  fail "no checkpoint appeared before the run ended"
fi

# --- with a weight average: validated beside the weights, the final file holds it, and a
# resume ends as an uninterrupted run ---------------------------------------------------------
ema=("${model[@]}" --epochs 6 --val-split 0.25 --model-ema-decay 0.99)
"$vit" train "${ema[@]}" --log "$tmp/m.log" --out "$tmp/m.safetensors" >"$tmp/m.out" 2>&1 \
  && ok || { fail "EMA run"; sed 's/^/  /' "$tmp/m.out" | tail -5; }
python3 -c '
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
assert len(lines) == 6 and all(0 <= l["ema_val_acc"] <= 1 and "val_acc" in l for l in lines)
' "$tmp/m.log" && ok || fail "EMA run: no ema_val_acc beside val_acc in every epoch"
"$vit" train "${ema[@]}" --stop-after-epochs 2 --log "$tmp/n.log" --out "$tmp/n.safetensors" \
  >"$tmp/n.out" 2>&1 && "$vit" train --data "$data/train" --resume "$tmp/n.ckpt.safetensors" \
  --log "$tmp/n.log" --out "$tmp/n.safetensors" --no-progress >"$tmp/n2.out" 2>&1 \
  && ok || { fail "EMA resume"; sed 's/^/  /' "$tmp/n2.out" | tail -5; }
metrics "$tmp/m.safetensors" >"$tmp/m.eval" && metrics "$tmp/n.safetensors" >"$tmp/n.eval"
cmp -s "$tmp/m.eval" "$tmp/n.eval" && ok || fail "the resumed EMA model evaluates differently"
# The final file is the average, not the last weights (which the checkpoint holds).
python3 -c '
import json, struct, sys
def meta(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n))["__metadata__"]
assert meta(sys.argv[1]).get("weights") == "model_ema"
assert "weights" not in meta(sys.argv[2])
' "$tmp/m.safetensors" "$tmp/m.ckpt.safetensors" && ok || fail "the final file does not hold the average"
metrics "$tmp/m.ckpt.safetensors" >"$tmp/m.raw.eval"
cmp -s "$tmp/m.eval" "$tmp/m.raw.eval" && fail "the average evaluates exactly as the last weights" || ok

# --- SIGTERM: checkpoint, stop, exit 128+15; the resume ends as the reference ------------------
"$vit" train "${recipe[@]}" --log "$tmp/c.log" --out "$tmp/c.safetensors" >"$tmp/c.out" 2>"$tmp/c.err" &
pid=$!
if wait_for "$pid" "$tmp/c.ckpt.safetensors" "$tmp/c.log" 2; then
  kill -TERM "$pid"
  wait "$pid"
  code=$?
  [ "$code" -eq 143 ] && ok || fail "SIGTERM: exit $code, want 143"
  grep -q "^vit: terminated (SIGTERM), checkpoint saved; resume with --resume" "$tmp/c.err" && ok \
    || fail "SIGTERM message: $(cat "$tmp/c.err")"
  "$vit" train --data "$data/train" --resume "$tmp/c.ckpt.safetensors" --log "$tmp/c.log" \
    --out "$tmp/c.safetensors" --no-progress >"$tmp/c2.out" 2>&1 && ok || fail "resume after SIGTERM"
  [ "$(curve "$tmp/a.log")" = "$(curve "$tmp/c.log")" ] && ok || fail "the curve after SIGTERM differs"
else
  fail "SIGTERM: no checkpoint appeared before the run ended"
fi

# --- SIGINT (Ctrl-C): the same clean stop, exit 128+2 ------------------------------------------
"$vit" train "${recipe[@]}" --log "$tmp/i.log" --out "$tmp/i.safetensors" >"$tmp/i.out" 2>"$tmp/i.err" &
pid=$!
if wait_for "$pid" "$tmp/i.ckpt.safetensors" "$tmp/i.log" 1; then
  kill -INT "$pid"
  wait "$pid"
  code=$?
  [ "$code" -eq 130 ] && ok || fail "SIGINT: exit $code, want 130"
  grep -q "^vit: interrupted (SIGINT), checkpoint saved; resume with --resume" "$tmp/i.err" && ok \
    || fail "SIGINT message: $(cat "$tmp/i.err")"
else
  fail "SIGINT: no checkpoint appeared before the run ended"
fi

# --- a file-size limit hit while saving: the old checkpoint and model survive ------------------
echo "old model" >"$tmp/d.safetensors"
echo "old checkpoint" >"$tmp/d.ckpt.safetensors"
(ulimit -f 16; exec "$vit" train "${model[@]}" --epochs 1 --out "$tmp/d.safetensors") >"$tmp/d.out" 2>"$tmp/d.err"
code=$?
[ "$code" -eq 1 ] && ok || fail "full disk: exit $code, want 1"
grep -q "^vit: cannot write '$tmp/d.ckpt.safetensors': File too large$" "$tmp/d.err" && ok \
  || fail "full disk message: $(cat "$tmp/d.err")"
[ "$(cat "$tmp/d.safetensors")" = "old model" ] && [ "$(cat "$tmp/d.ckpt.safetensors")" = "old checkpoint" ] \
  && ok || fail "a failed save damaged the files already there"
ls "$tmp" | grep -q "^d\..*\.tmp" && fail "a failed save left its temporary file" || ok

# --- an unreadable image is skipped and counted (as an unprivileged user: root reads anything) --
mkdir -p "$tmp/perm" && cp -r "$data/train/horizontal" "$data/train/vertical" "$data/train/diagonal" "$tmp/perm/" 2>/dev/null \
  || cp -r "$data/train/." "$tmp/perm/"
chmod -R a+rX "$tmp/perm" && chmod 000 "$tmp/perm/vertical/000.png" && chmod 777 "$tmp"
as_user=()
[ "$(id -u)" -eq 0 ] && as_user=(setpriv --reuid=65534 --regid=65534 --clear-groups)
"${as_user[@]}" "$vit" train --data "$tmp/perm" --model vit_fmnist_patch4 --img-size 16 --patch-size 4 \
  --embed-dim 32 --depth 1 --num-heads 2 --batch-size 16 --epochs 1 --no-progress \
  --out "$tmp/perm.safetensors" >"$tmp/e.out" 2>"$tmp/e.err"
code=$?
[ "$code" -eq 0 ] && ok || { fail "unreadable image: exit $code"; sed 's/^/  /' "$tmp/e.err" | head -3; }
grep -q "vertical/000.png': cannot read: Permission denied" "$tmp/e.err" && ok \
  || fail "unreadable image: no reason given: $(head -3 "$tmp/e.err")"
grep -q "1 unreadable training images skipped" "$tmp/e.err" && ok || fail "unreadable image not counted"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
