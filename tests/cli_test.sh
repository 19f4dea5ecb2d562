#!/usr/bin/env bash
# The cufm CLI end to end: a tiny train / resume / sample / eval round, and bad input, each of which
# must give one line on stderr (no source location unless --verbose), a non-zero exit, and leave
# every existing file as it was.   usage: cli_test.sh <cufm binary> <work folder>
set -uo pipefail
CUFM="$1"
WORK="$2"
rm -rf "$WORK"
mkdir -p "$WORK"
cd "$WORK" || exit 1
FAILS=0
fail() {
  echo "cli_test: FAIL: $*" >&2
  FAILS=$((FAILS + 1))
}

run_ok() {  # run_ok <cufm args...>: must exit 0; its stdout+stderr in $OUT_TEXT
  OUT_TEXT=$("$CUFM" "$@" 2>&1)
  local rc=$?
  [ $rc -eq 0 ] || fail "cufm $* exited $rc: $OUT_TEXT"
}

run_fails() {  # run_fails <needle> <cufm args...>: non-zero exit, one line on stderr naming the needle
  local needle="$1"
  shift
  local err rc
  err=$("$CUFM" "$@" 2>&1 >/dev/null)
  rc=$?
  if [ $rc -eq 0 ]; then
    fail "cufm $* succeeded; expected an error about '$needle'"
    return
  fi
  [ "$(printf '%s' "$err" | wc -l)" -eq 0 ] || fail "cufm $*: the error is more than one line: $err"
  [[ "$err" == *"$needle"* ]] || fail "cufm $*: the error does not mention '$needle': $err"
  [[ "$err" != *".cpp:"* ]] || fail "cufm $*: the error shows a source location without --verbose: $err"
}

# A .npy of float32 [n, 1] from bytes (printf escapes), for a 1-D model.
write_npy_1d() {  # write_npy_1d <path> <repeats> <float32 values' bytes as \xNN escapes>
  write_npy_cols "$1" 1 "$2" "$3"
}
# A .npy of float32 [n, cols] from bytes (printf escapes) repeated.
write_npy_cols() {  # write_npy_cols <path> <cols> <repeats> <float32 values' bytes as \xNN escapes>
  local path="$1" cols="$2" reps="$3" bytes="$4"
  local escapes="${bytes//[^x]/}"
  local rows=$((reps * ${#escapes} / 4 / cols))
  local dict="{'descr': '<f4', 'fortran_order': False, 'shape': ($rows, $cols), }"
  local total=$(((10 + ${#dict} + 1 + 63) / 64 * 64))
  local hlen=$((total - 10))
  {
    printf '\x93NUMPY\x01\x00'
    printf "\\x$(printf %02x $((hlen % 256)))\\x$(printf %02x $((hlen / 256)))"
    printf '%s%*s\n' "$dict" "$((hlen - ${#dict} - 1))" ""
    for ((i = 0; i < reps; i++)); do printf "$bytes"; done
  } >"$path"
}

TRAIN=(train --data 8gaussians --n-data 2000 --hidden 16,16 --batch 64 --device cpu)
run_ok "${TRAIN[@]}" --out run --steps 20 --checkpoint-every 10
CKPT=run/checkpoint.safetensors
[ -f "$CKPT" ] || fail "no checkpoint written"
BEFORE=$(sha256sum "$CKPT")

# ---- syntax and values, refused before any work --------------------------------------------
run_fails "--bogus" train --bogus
run_fails "required" sample
run_fails "no_such.npy" train --data no_such.npy --out fresh --quiet
printf 'this is not an npy file' >bad.npy
run_fails "bad.npy" train --data bad.npy --out fresh --quiet
run_fails "solver" sample "$CKPT" --solver rk7 --out x.npy
run_fails "hidden" train --data moons --hidden 16,x --out fresh --quiet
run_fails "'' is not a width" train --data moons --hidden 16, --out fresh --quiet
run_fails "'' is not a width" train --data moons --hidden 1,,2 --out fresh --quiet
run_fails "device" train --data moons --device tpu --out fresh --quiet
printf '12345678garbage' >corrupt.safetensors
run_fails "corrupt.safetensors" sample corrupt.safetensors --out x.npy
run_fails "label" sample "$CKPT" --class 3 --out x.npy
for opt in --steps --checkpoint-every --log-every --seed --data-seed; do
  run_fails "$opt: must be >= 0, got -1" train --data moons --out fresh "$opt" -1
done
run_fails "--class must be a class index >= 0, got -5" sample "$CKPT" --class -5 --out x.npy
run_fails "--labels 'l.npy' is for .npy data" train --data moons --labels l.npy --out fresh
run_fails "--n-data and --data-seed are for toy datasets" train --data bad.npy --n-data 5 --out fresh
run_fails "--label-dropout applies to conditional models" train --data moons --label-dropout 0.3 --out fresh
run_fails "--logit-mean and --logit-std apply to --time-sampling logit-normal" train --data moons --logit-std 0 --out fresh
run_fails "--max-points must be >= 2" eval x.npy --data moons --max-points 0
run_fails "--projections must be in [1, 1000000]" eval x.npy --data moons --projections 2000000000
run_fails "dopri5 needs a finite atol >= 1e-15" sample "$CKPT" --solver dopri5 --atol 1e-38 --rtol 0 --out x.npy
run_fails "--atol and --rtol apply to --solver dopri5" sample "$CKPT" --atol 1e-3 --out x.npy
run_fails "--steps applies to fixed-step solvers" sample "$CKPT" --solver dopri5 --steps 5 --out x.npy
run_fails "--range must be a positive finite half-width" sample "$CKPT" --range 0 --out x.npy
run_fails "--range must be a positive finite half-width" sample "$CKPT" --range nan --out x.npy
run_fails "--out 'x.png' is where the samples go" sample "$CKPT" --out x.png
run_fails "would overwrite the samples" sample "$CKPT" --out y.npy --png y.npy
run_fails "--guidance needs --class" sample "$CKPT" --guidance 2 --out x.npy
run_fails "--steps: must be a decimal integer >= 0, got '010'" train --data moons --out fresh --steps 010
run_fails "--batch: must be a decimal integer, got '0x40'" train --data moons --out fresh --batch 0x40
run_fails "--steps: must be >= 0, got  -1" train --data moons --out fresh --steps " -1"
run_fails "is the checkpoint being sampled" sample "$CKPT" --out "$CKPT"
run_fails "is the checkpoint being sampled" sample "$CKPT" --png "$CKPT"
run_fails "the folder 'nodir' does not exist" sample "$CKPT" --out nodir/s.npy
run_fails "--n-data and --data-seed need --data" train --out run --resume --n-data 999
[ -e fresh ] && fail "a refused train left the folder 'fresh' behind"
for f in x.npy x.png y.npy; do [ -e "$f" ] && fail "a refused sample wrote $f"; done

# ---- memory: refused with the figures, before allocating --------------------------------------
export CUFM_MEMORY_LIMIT=1G
run_fails "needs about 16.0 GiB of memory but only" train --data moons --hidden 65536,65536 --out fresh
run_fails "needs about" train --data moons --n-data 100 --hidden 16 --batch 67108864 --out fresh
run_fails "toy dataset 'moons' of 4294967296 points needs about 48.0 GiB" train --data moons --n-data 4294967296 --out fresh
run_fails "sampling 2147483648 points" sample "$CKPT" --count 2147483648 --out x.npy
unset CUFM_MEMORY_LIMIT
[ -e fresh ] && fail "a refused train left the folder 'fresh' behind"

# ---- outputs the user owns are never replaced or followed -------------------------------------
printf 'precious' >victim.txt
ln -s victim.txt link.npy
run_fails "exists and is a symbolic link" sample "$CKPT" --count 10 --out link.npy
mkfifo fifo.npy
run_fails "exists and is a FIFO" sample "$CKPT" --count 10 --out fifo.npy
run_fails "exists and is a device node" sample "$CKPT" --count 10 --out s.npy --png /dev/null
[ "$(cat victim.txt)" = precious ] || fail "the symlink's target was overwritten"
[ -L link.npy ] && [ -p fifo.npy ] || fail "a special output path was replaced"
run_fails "already exists: pass --resume" "${TRAIN[@]}" --out run --steps 5
run_fails "contradict" "${TRAIN[@]}" --out run --resume --overwrite
run_fails "cannot create the output folder '/proc/cufm-test'" "${TRAIN[@]}" --out /proc/cufm-test --steps 5
[ "$(sha256sum "$CKPT")" = "$BEFORE" ] || fail "a failed command changed the existing checkpoint"

# ---- resume: the recipe and the data are the checkpoint's -------------------------------------
run_fails "--lr 0.01 differs from the checkpoint's 0.001" train --out run --resume --lr 0.01 --steps 30
run_fails "--hidden 32 differs from the checkpoint's 16,16" train --out run --resume --hidden 32 --steps 30
run_fails "--data toy 'moons' (100000 points, seed 0) differs from the checkpoint's data toy '8gaussians'" \
  train --out run --resume --data moons --steps 30
run_fails "--seed 5 differs" train --out run --resume --seed 5 --steps 30
[ "$(sha256sum "$CKPT")" = "$BEFORE" ] || fail "a refused resume changed the checkpoint"
run_ok train --out run --resume --steps 30 --threads 1 --device cpu --activation SiLU
[[ "$OUT_TEXT" == *"step 30"* ]] || fail "resume did not reach step 30: $OUT_TEXT"

# ---- learning-rate schedules: recorded, and kept on resume -------------------------------------
run_fails "--decay-steps and --min-lr apply to --lr-schedule cosine or linear" "${TRAIN[@]}" --out sched --decay-steps 5
run_fails "unknown learning-rate schedule 'step'" "${TRAIN[@]}" --out sched --lr-schedule step
run_ok "${TRAIN[@]}" --out sched --steps 6 --lr-schedule cosine --warmup-steps 2 --min-lr 1e-5
run_fails "--lr-schedule linear differs from the checkpoint's cosine" train --out sched --resume --steps 8 --lr-schedule linear
run_ok train --out sched --resume --steps 8 --quiet --device cpu

# ---- minibatch OT coupling: recorded, kept on resume, refused where it cannot apply -------------
run_fails "unknown coupling 'hungarian'" "${TRAIN[@]}" --out ot --coupling hungarian
run_fails "ot_reg" "${TRAIN[@]}" --out ot --coupling sinkhorn --ot-reg 0
run_ok "${TRAIN[@]}" --out ot --steps 6 --coupling exact
run_fails "--coupling sinkhorn differs from the checkpoint's exact" train --out ot --resume --steps 8 --coupling sinkhorn
run_ok train --out ot --resume --steps 8 --quiet --device cpu
run_ok "${TRAIN[@]}" --out ot-sk --steps 4 --coupling sinkhorn --ot-reg 0.1 --conditional

# ---- precision on the CPU: tf32 refused; bf16 runs where `cufm info` says so, else says why ------
run_fails "precision tf32 needs the CUDA backend" "${TRAIN[@]}" --out p32 --steps 2 --precision tf32
run_fails "precision tf32 needs the CUDA backend" sample "$CKPT" --count 10 --steps 2 --device cpu --precision tf32 --out p32.npy
if "$CUFM" info | grep -q '; bf16: oneDNN'; then
  run_ok "${TRAIN[@]}" --out p16 --steps 4 --precision bf16
  [[ "$OUT_TEXT" == *"on cpu (bf16)"* ]] || fail "--precision bf16: the run does not say it is bf16: $OUT_TEXT"
  run_ok sample p16/checkpoint.safetensors --count 50 --steps 2 --device cpu --precision bf16 --out p16.npy
  [ -f p16.npy ] || fail "bf16 sampling wrote no samples"
else
  run_fails "precision bf16 on the CPU backend" "${TRAIN[@]}" --out p16 --steps 4 --precision bf16
fi

# ---- --steps 0 writes the initial weights; they sample -----------------------------------------
run_ok "${TRAIN[@]}" --out init --steps 0
[[ "$OUT_TEXT" == *"step 0: the initial weights"* ]] || fail "--steps 0: $OUT_TEXT"
run_ok sample init/checkpoint.safetensors --count 50 --steps 2 --device cpu --out init.npy
[ -f init.npy ] && [ -f init.png ] || fail "sampling the initial weights wrote no files"

# ---- a 1-D model: its samples are plotted as a histogram ---------------------------------------
write_npy_1d one.npy 64 '\x00\x00\x80\x3f\x00\x00\x80\xbf\x00\x00\x00\x40\x00\x00\x00\x00'
run_ok train --data one.npy --hidden 8 --batch 32 --steps 5 --device cpu --quiet --out one
run_ok sample one/checkpoint.safetensors --count 100 --steps 2 --device cpu --out one_s.npy
[ -s one_s.png ] || fail "no histogram for a 1-D model"

# ---- .npy data: a path with ':' resumes from another folder; a changed file is named -----------
mkdir -p data sub
write_npy_1d "data/a:b.npy" 64 '\x00\x00\x80\x3f\x00\x00\x80\xbf'
run_ok train --data "data/a:b.npy" --hidden 8 --batch 16 --steps 4 --device cpu --quiet --out colon
(cd sub && "$CUFM" train --out ../colon --resume --steps 8 --quiet --device cpu >/dev/null 2>"$WORK/resume.err") ||
  fail "resuming a ':' .npy run from another folder: $(cat "$WORK/resume.err")"
write_npy_1d "data/a:b.npy" 64 '\x00\x00\x00\x40\x00\x00\x80\xbf'
run_fails "changed since the checkpoint was written" train --out colon --resume --steps 12

# ---- threads above 4x the cores: clamped, and said -----------------------------------------------
run_ok "${TRAIN[@]}" --out threads --steps 2 --threads 100000
[[ "$OUT_TEXT" == *"more than 4x this machine's cores"* ]] || fail "--threads 100000 was not reported: $OUT_TEXT"

# ---- --verbose shows where an error was raised ---------------------------------------------------
err=$("$CUFM" train --data no_such.npy --out fresh --verbose 2>&1)
[[ "$err" == *".cpp:"[0-9]*"]"* ]] || fail "--verbose did not show the source location: $err"

run_ok sample "$CKPT" --count 500 --solver heun --steps 8 --device cpu --out s.npy
[ -f s.npy ] && [ -f s.png ] || fail "sample did not write s.npy and s.png"
run_ok eval s.npy --data 8gaussians --n-data 2000
[[ "$OUT_TEXT" == *sliced_w2* ]] || fail "eval printed no sliced_w2: $OUT_TEXT"

# ---- integrate from given points, backwards and forwards; the velocity field at given points -----
run_ok sample "$CKPT" --x0 s.npy --t0 1 --t1 0 --solver rk4 --steps 32 --device cpu --out back.npy
run_ok sample "$CKPT" --x0 back.npy --solver rk4 --steps 32 --device cpu --out there.npy
run_ok eval there.npy --data s.npy
w2=$(printf '%s\n' "$OUT_TEXT" | awk '/^sliced_w2/ {print $2}')
awk -v w="$w2" 'BEGIN {exit !(w < 0.01)}' || fail "back-and-forth integration did not return to the samples: sliced W2 $w2"
run_fails "--x0 gives the points" sample "$CKPT" --x0 s.npy --count 5 --out x.npy
run_fails "must lie in [0, 1]" sample "$CKPT" --x0 s.npy --t1 1.5 --out x.npy
run_fails "expected points [N, 2]" sample "$CKPT" --x0 one_s.npy --out x.npy
run_ok velocity "$CKPT" --x s.npy --t 0.5 --device cpu --out v.npy
[ -f v.npy ] || fail "velocity wrote no v.npy"
[[ "$OUT_TEXT" == *"velocity at 500 points"* ]] || fail "velocity: $OUT_TEXT"
run_fails "--t must lie in [0, 1]" velocity "$CKPT" --x s.npy --t 2 --out v2.npy
run_fails "--class given, but the checkpoint's model is unconditional" velocity "$CKPT" --x s.npy --t 0.5 --class 1 --out v2.npy
run_fails "expected points [N, 2]" velocity "$CKPT" --x one_s.npy --t 0.5 --out v2.npy
run_fails "is the --x file" velocity "$CKPT" --x s.npy --t 0.5 --out s.npy
run_fails "required" velocity "$CKPT" --t 0.5
[ -e v2.npy ] && fail "a refused velocity wrote v2.npy"

# ---- log-likelihoods: logprob at points (both divergences), sample --log-prob, their refusals -------
run_ok sample "$CKPT" --count 300 --solver rk4 --steps 16 --device cpu --out lps.npy --log-prob lps_lp.npy
[ -f lps_lp.npy ] || fail "sample --log-prob wrote no lps_lp.npy"
run_ok logprob "$CKPT" lps.npy --solver rk4 --steps 16 --device cpu --out lp.npy --noise lp_noise.npy
[[ "$OUT_TEXT" == *"log p at 300 points"*"exact divergence"*"cpu divergence"* ]] || fail "logprob: $OUT_TEXT"
[ -f lp.npy ] && [ -f lp_noise.npy ] || fail "logprob wrote no lp.npy or lp_noise.npy"
run_ok logprob "$CKPT" lps.npy --divergence hutchinson --probes 4 --device cpu --out lp_h.npy
[[ "$OUT_TEXT" == *"hutchinson divergence"* ]] || fail "logprob --divergence hutchinson: $OUT_TEXT"
run_fails "--probes must be in [1, 1024]" logprob "$CKPT" lps.npy --probes 0 --out lp2.npy
run_fails "unknown divergence 'trace'" logprob "$CKPT" lps.npy --divergence trace --out lp2.npy
run_fails "is the points file" logprob "$CKPT" lps.npy --out lps.npy
run_fails "expected points [N, 2]" logprob "$CKPT" one_s.npy --out lp2.npy
run_fails "--divergence and --probes apply with --log-prob" sample "$CKPT" --divergence exact --out lps2.npy
run_fails "--log-prob 'lps2.npy' is also" sample "$CKPT" --out lps2.npy --log-prob lps2.npy
[ -e lp2.npy ] || [ -e lps2.npy ] && fail "a refused logprob or sample wrote its output"
# ---- context vectors: train on (points, contexts), sample and logprob with one or one per point -----
run_ok sample "$CKPT" --count 500 --seed 9 --device cpu --out ctx.npy
run_ok sample "$CKPT" --count 1 --seed 10 --device cpu --out ctx1.npy
run_ok train --data s.npy --context ctx.npy --context-dropout 0.2 --hidden 16,16 --batch 64 --steps 10 \
  --device cpu --out crun
CCKPT=crun/checkpoint.safetensors
[[ "$OUT_TEXT" == *"step 10"* ]] || fail "train --context: $OUT_TEXT"
run_ok train --data s.npy --context ctx.npy --steps 12 --device cpu --quiet --out crun --resume
run_fails "differs from the checkpoint's data" train --data s.npy --context ctx1.npy --steps 14 --out crun --resume
run_fails "--context-dropout 0.5 differs" train --data s.npy --context-dropout 0.5 --steps 14 --out crun --resume
run_ok sample "$CCKPT" --count 100 --context ctx1.npy --guidance 2 --device cpu --out cs.npy --log-prob cs_lp.npy
[ -f cs.npy ] && [ -f cs_lp.npy ] || fail "sample --context wrote no cs.npy or cs_lp.npy"
run_ok sample "$CCKPT" --count 500 --context ctx.npy --device cpu --out cs2.npy
run_ok logprob "$CCKPT" s.npy --context ctx.npy --solver midpoint --device cpu --out clp.npy
[[ "$OUT_TEXT" == *"log p at 500 points"* ]] || fail "logprob --context: $OUT_TEXT"
run_ok velocity "$CCKPT" --x s.npy --t 0.3 --context ctx1.npy --device cpu --out cv.npy
run_fails "--context-dropout applies to models with a context" train --data moons --context-dropout 0.1 --out fresh
run_fails "--context 'ctx.npy' is for .npy data" train --data moons --context ctx.npy --out fresh
run_fails "--context needs --data" train --out crun --resume --context ctx.npy
run_fails "the checkpoint's model has no context" logprob "$CKPT" s.npy --context ctx.npy --out clp2.npy
run_fails "expected one row of 2 (the model's context_dim) or [300, 2]" logprob "$CCKPT" lps.npy --context ctx.npy --out clp2.npy
run_fails "or [3, 2], got [1, 300]" sample "$CCKPT" --count 3 --context lps_lp.npy --out cs3.npy
run_fails "an output names the --context file" sample "$CCKPT" --context ctx.npy --count 500 --out ctx.npy
run_fails "context file 'ctx1.npy' must have shape (500, K)" train --data s.npy --context ctx1.npy --out fresh2 --quiet
[ -e clp2.npy ] || [ -e cs3.npy ] || [ -e fresh2/checkpoint.safetensors ] && fail "a refused context command wrote its output"
run_ok info
[[ "$OUT_TEXT" == *"CPU threads wait: GOMP_SPINCOUNT=1000"* ]] || fail "info: the bounded spin count is not set: $OUT_TEXT"
OUT_TEXT=$(CUFM_GEMM=openblas "$CUFM" info 2>&1)
[[ "$OUT_TEXT" == *"OpenBLAS sgemm"* ]] || fail "info: CUFM_GEMM=openblas not honoured: $OUT_TEXT"
CUFM_GEMM=mkl run_fails "CUFM_GEMM='mkl': expected openblas, onednn or auto" info
OUT_TEXT=$(GOMP_SPINCOUNT=7000 "$CUFM" info 2>&1)
[[ "$OUT_TEXT" == *"CPU threads wait: GOMP_SPINCOUNT=7000"* ]] || fail "info: the user's GOMP_SPINCOUNT was not kept: $OUT_TEXT"
run_ok --help
run_ok --version
ls -a run | grep -q 'cufm-tmp' && fail "a temporary was left in run/"

# ---- --quiet is quiet; a PNG where it shows the samples, or where asked; --labels needs a
# conditional model -------------------------------------------------------------------------------
run_ok "${TRAIN[@]}" --out quiet --steps 3 --quiet
[ -z "$OUT_TEXT" ] || fail "train --quiet printed: $OUT_TEXT"
run_ok sample quiet/checkpoint.safetensors --count 20 --steps 2 --device cpu --out quiet.npy --quiet
[ -z "$OUT_TEXT" ] || fail "sample --quiet printed: $OUT_TEXT"
[ -f quiet.png ] || fail "2-D samples got no PNG"
run_ok sample quiet/checkpoint.safetensors --count 20 --steps 2 --device cpu --out nopng.npy --no-png
[ -e nopng.png ] && fail "--no-png wrote nopng.png"
[[ "$OUT_TEXT" == *"nopng.npy"* && "$OUT_TEXT" != *".png"* ]] || fail "sample --no-png named a PNG: $OUT_TEXT"
run_fails "--png and --no-png contradict" sample quiet/checkpoint.safetensors --out both.npy --png both.png --no-png
write_npy_cols three.npy 3 16 '\x00\x00\x80\x3f\x00\x00\x80\xbf\x00\x00\x00\x40\x00\x00\x00\x00\x00\x00\x40\x40\x00\x00\x00\xbf'
run_ok train --data three.npy --hidden 8 --batch 16 --steps 3 --device cpu --quiet --out three
run_ok sample three/checkpoint.safetensors --count 20 --steps 2 --device cpu --out three_s.npy
[ -f three_s.npy ] || fail "3-D sampling wrote no samples"
[ -e three_s.png ] && fail "3-D samples got a PNG without --png"
run_ok sample three/checkpoint.safetensors --count 20 --steps 2 --device cpu --out three_t.npy --png three_t.png
[ -s three_t.png ] || fail "--png did not write three_t.png"
run_fails "add --conditional" train --data three.npy --labels three.npy --out labelled --quiet
[ -e labelled ] && fail "a refused train made its folder"

if [ $FAILS -ne 0 ]; then
  echo "cli_test: $FAILS check(s) failed" >&2
  exit 1
fi
echo "cli_test: every check passed"
