#!/usr/bin/env bash
# Times the README's first command on a clean clone of HEAD and writes what it measured to
# bench/results/first-command.md, the one place the README's numbers for it come from:
# the build, the 3,000 training steps, the sampling, and the samples' distance to the data.
#   usage: scripts/time-first-command.sh   (about 30 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
commit=$(git rev-parse --short HEAD)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git clone --quiet "$root" "$work/clone"
cd "$work/clone"
secs() { date +%s.%N; }
t0=$(secs)
bash scripts/install-deps.sh >/dev/null
bash scripts/build.sh >/dev/null
t1=$(secs)
build/cufm train --data checkerboard --steps 3000 --out runs/checkerboard --overwrite --quiet
t2=$(secs)
build/cufm sample runs/checkerboard/checkpoint.safetensors --out runs/checkerboard/samples.npy --quiet
t3=$(secs)
eval_out=$(build/cufm eval runs/checkerboard/samples.npy --data checkerboard)
sw2=$(awk '/^sliced_w2/ {print $2}' <<<"$eval_out")
ed=$(awk '/^energy_distance/ {print $2}' <<<"$eval_out")
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
family=$(grep -m1 'cpu family' /proc/cpuinfo | cut -d: -f2 | tr -d ' ')
model=$(grep -m1 '^model\s' /proc/cpuinfo | cut -d: -f2 | tr -d ' ')
isa=$(build/cufm info | sed -n 's/^CPU: //p')
mins() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (b - a) / 60 }'; }
per_step=$(awk -v a="$t1" -v b="$t2" 'BEGIN { printf "%.0f", (b - a) * 1000 / 3000 }')
sample_s=$(awk -v a="$t2" -v b="$t3" 'BEGIN { printf "%.0f", b - a }')
cat >"$root/bench/results/first-command.md" <<MD
# The README's first command, timed

Written by \`scripts/time-first-command.sh\` on a clean clone at $commit, $(date -u +%Y-%m-%d).
Machine: $cpu (family $family, model $model), $(nproc) cores; CPU features: $isa.

| phase | time |
| --- | ---: |
| install-deps and build | $(mins "$t0" "$t1") min |
| train 3,000 steps (3-512x4-2, batch 4096) | $(mins "$t1" "$t2") min ($per_step ms a step) |
| sample 50,000 points (midpoint, 20 steps) | $sample_s s |
| whole command | $(mins "$t0" "$t3") min |

The samples against the training data (\`cufm eval\` with --data checkerboard: 100,000 points, seed 0):
sliced W2 $sw2, energy distance $ed.
MD
cat "$root/bench/results/first-command.md"
