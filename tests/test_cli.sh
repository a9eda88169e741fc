#!/usr/bin/env bash
# The vit executable's behaviour on good and bad command lines: exit codes and one-line errors.
# usage: test_cli.sh path/to/vit
set -u
vit=$1
passed=0 failed=0
out=$(mktemp) err=$(mktemp)
trap 'rm -f "$out" "$err"' EXIT

# matches FILE PATTERN: PATTERN is a regex, or EMPTY (the file must be empty), or ANY.
matches() {
  case "$2" in
    ANY) return 0 ;;
    EMPTY) [ ! -s "$1" ] ;;
    *) grep -Eq "$2" "$1" ;;
  esac
}

# expect NAME WANT_CODE STDOUT_PATTERN STDERR_PATTERN -- ARGS...
expect() {
  local name=$1 want=$2 out_re=$3 err_re=$4
  shift 5
  "$vit" "$@" >"$out" 2>"$err" </dev/null
  local code=$? ok=1
  [ "$code" -eq "$want" ] || ok=0
  matches "$out" "$out_re" || ok=0
  matches "$err" "$err_re" || ok=0
  # An error is one line on stderr.
  [ "$want" -eq 0 ] || [ "$(wc -l <"$err")" -eq 1 ] || ok=0
  if [ $ok -eq 1 ]; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    echo "FAIL: $name (exit $code, want $want)"
    sed 's/^/  stdout: /' "$out" | head -5
    sed 's/^/  stderr: /' "$err" | head -5
  fi
}

expect "help" 0 '^usage: vit' EMPTY -- --help
expect "short help" 0 '^usage: vit' EMPTY -- -h
expect "version names oneDNN and the ISA" 0 'oneDNN 2\.[0-9]+\.[0-9]+.*cpu isa [a-z0-9_]+' EMPTY -- --version
expect "info" 0 'cpu isa: ' EMPTY -- info
expect "info help" 0 '^usage: vit info' EMPTY -- info --help
expect "no command" 2 EMPTY '^vit: no command given' --
expect "unknown command" 2 EMPTY "^vit: unknown command 'frobnicate'" -- frobnicate
expect "unknown flag" 2 EMPTY "^vit: unrecognised option '--bogus'" -- --bogus
expect "unknown command flag" 2 EMPTY "^vit: unrecognised option '--bogus'" -- info --bogus
expect "bad flag value" 2 EMPTY "^vit: .*threads" -- info --threads many
expect "bench measures a small model" 0 '"images_per_second":\{"max":[0-9.e+]+,"median":[0-9.e+]+' EMPTY \
  -- bench --model vit_fmnist_patch7 --batch-size 2 --warmup 0 --iters 1 --repeats 1 --no-peak
expect "bench profile lists oneDNN primitives" 0 '"primitives":\[\{"calls_per_step":[0-9]+' '^per step: ' \
  -- bench --model cnn_resnet8_fmnist --mode train --batch-size 2 --warmup 0 --iters 1 --repeats 1 --no-peak --profile
expect "bench bad precision" 2 EMPTY "^vit: vit bench: --precision must be f32 or bf16, not 'fp16'" \
  -- bench --precision fp16
if "$vit" info | grep -q 'cpu isa: avx512'; then  # oneDNN 2.6 runs bf16 on AVX-512 only
  expect "bench bf16 inference" 0 '"precision":"bf16"' EMPTY \
    -- bench --model vit_fmnist_patch7 --batch-size 2 --warmup 0 --iters 1 --repeats 1 --precision bf16
  expect "bench bf16 training" 0 '"mode":"train".*"precision":"bf16"' EMPTY \
    -- bench --model vit_fmnist_patch7 --mode train --batch-size 2 --warmup 0 --iters 1 --repeats 1 --precision bf16 --no-peak
else
  expect "bench bf16 refused without AVX-512" 1 EMPTY "^vit: bf16 needs a CPU with AVX-512" \
    -- bench --model vit_fmnist_patch7 --precision bf16 --no-peak
fi
expect "bench CNN has no bf16 path" 1 EMPTY "^vit: model 'resnet' has no bf16 path; use f32" \
  -- bench --model cnn_resnet8_fmnist --precision bf16 --no-peak
expect "bench bad mode" 2 EMPTY "^vit: vit bench: --mode must be infer or train, not 'fast'" -- bench --mode fast
expect "bench size flag of another architecture" 2 EMPTY "^vit: vit bench: --patch-size does not apply to cnn_resnet8_fmnist" \
  -- bench --model cnn_resnet8_fmnist --patch-size 4

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
