#!/usr/bin/env bash
# Fault tests for the cufm CLI (ctest label `faults`), one case per call:
#   faults_test.sh <cufm> <work> kill9        kill -9 at random moments of runs that checkpoint every
#                                             step: the checkpoint is always the old or the new one,
#                                             whole, and the next run clears the dead runs' temporaries
#   faults_test.sh <cufm> <work> full-disk    a full filesystem (a small tmpfs): the save fails with a
#                                             message and the old checkpoint stays whole (exit 77, a
#                                             skip, where no tmpfs can be mounted)
#   faults_test.sh <cufm> <work> read-only    --out on a read-only filesystem fails before training, at
#                                             once (exit 77, a skip, where no tmpfs can be mounted)
#   faults_test.sh <cufm> <work> planted-link a link planted at the old temporary name is not followed
#   faults_test.sh <cufm> <work> two-runs     a second train into a folder in use fails, naming the first
set -uo pipefail
CUFM="$1"
WORK="$2"
CASE="$3"
rm -rf "$WORK"
mkdir -p "$WORK"
cd "$WORK" || exit 1
fail() {
  echo "faults_test $CASE: FAIL: $*" >&2
  exit 1
}
# A checkpoint of ~3 MB (hidden 512,512: 267k parameters x 3 buffers), so its write takes a while.
TRAIN=(train --data moons --n-data 2000 --hidden 512,512 --batch 16 --device cpu --threads 1 --quiet)

loads() {  # loads <checkpoint>: sampling one point from it works
  "$CUFM" sample "$1" --count 4 --steps 1 --device cpu --threads 1 --out "$WORK/probe.npy" >/dev/null 2>&1
}

case "$CASE" in
  kill9)
    "$CUFM" "${TRAIN[@]}" --out run --steps 1 >/dev/null || fail "the first run failed"
    kills=0
    for i in $(seq 1 12); do
      "$CUFM" "${TRAIN[@]}" --out run --resume --steps 100000 --checkpoint-every 1 >/dev/null 2>&1 &
      pid=$!
      sleep "0.$((RANDOM % 9 + 1))"
      kill -9 "$pid" 2>/dev/null && kills=$((kills + 1))
      wait "$pid" 2>/dev/null
      loads run/checkpoint.safetensors || fail "after kill -9 number $i the checkpoint does not load"
    done
    [ "$kills" -ge 10 ] || fail "only $kills of 12 runs were still running when killed: the case tests nothing"
    step=$("$CUFM" "${TRAIN[@]}" --out run --resume --steps 0 2>&1 | grep -o 'at step [0-9]*' | head -n1 | grep -o '[0-9]*')
    [ -n "$step" ] || fail "the killed runs' checkpoint has no step"
    # A run that finishes clears the temporaries the killed ones left (their processes are gone).
    "$CUFM" "${TRAIN[@]}" --out run --resume --steps $((step + 3)) --checkpoint-every 1 >/dev/null 2>&1 ||
      fail "the run after the kills failed"
    # Left: only temporaries whose pid a live process has since taken (cuFM keeps those, to be safe).
    leftovers=0
    for f in $(ls -A run | grep 'cufm-tmp' || true); do
      pid=${f##*.cufm-tmp.}
      pid=${pid%%.*}
      kill -0 "$pid" 2>/dev/null || leftovers=$((leftovers + 1))
    done
    [ "$leftovers" -eq 0 ] || fail "$leftovers temporaries of dead runs left in run/: $(ls -A run)"
    step_before="at step $step"
    echo "faults_test kill9: $kills runs killed mid-training; the checkpoint loaded after each ($step_before)"
    ;;

  full-disk)
    mkdir -p disk
    if ! mount -t tmpfs -o size=4m cufm-fault-test disk 2>mount.err; then
      echo "faults_test full-disk: SKIPPED: cannot mount a tmpfs here ($(head -n1 mount.err))"
      exit 77
    fi
    trap 'umount disk' EXIT
    "$CUFM" "${TRAIN[@]}" --out disk/run --steps 1 >/dev/null || fail "the first run failed"
    before=$(sha256sum disk/run/checkpoint.safetensors | cut -d' ' -f1)
    dd if=/dev/zero of=disk/filler bs=64k 2>/dev/null  # fills the filesystem
    err=$("$CUFM" "${TRAIN[@]}" --out disk/run --resume --steps 3 2>&1)
    [ $? -ne 0 ] || fail "a save onto a full disk succeeded"
    [[ "$err" == *"No space left on device"* ]] || fail "the error does not say the disk is full: $err"
    [ "$(sha256sum disk/run/checkpoint.safetensors | cut -d' ' -f1)" = "$before" ] || fail "the old checkpoint changed"
    loads disk/run/checkpoint.safetensors || fail "the old checkpoint does not load"
    [ "$(ls -A disk/run | grep -c cufm-tmp)" -eq 0 ] || fail "a temporary was left on the full disk"
    echo "faults_test full-disk: the save failed cleanly and the old checkpoint is whole"
    ;;

  read-only)
    mkdir -p ro
    if ! mount -t tmpfs -o ro,size=1m cufm-fault-test ro 2>mount.err; then
      echo "faults_test read-only: SKIPPED: cannot mount a tmpfs here ($(head -n1 mount.err))"
      exit 77
    fi
    trap 'umount ro' EXIT
    start=$(date +%s)
    err=$("$CUFM" "${TRAIN[@]}" --out ro/run --steps 2000 --checkpoint-every 2000 2>&1)
    [ $? -ne 0 ] || fail "training into a read-only filesystem succeeded"
    [[ "$err" == *"Read-only file system"* ]] || fail "the error does not say the filesystem is read-only: $err"
    [[ "$err" != *"training "* ]] || fail "it trained before finding out: $err"
    [ $(($(date +%s) - start)) -le 10 ] || fail "the read-only folder was found only after $(($(date +%s) - start)) s"
    echo "faults_test read-only: refused at once: $err"
    ;;

  planted-link)
    printf 'precious' >victim.txt
    "$CUFM" "${TRAIN[@]}" --out run --steps 1 >/dev/null || fail "the first run failed"
    # The pids the next run could get: plant the old scheme's name for each of the next few.
    next=$(($(sh -c 'echo $$') + 1))
    for p in $(seq "$next" $((next + 200))); do ln -sf "$WORK/victim.txt" "run/checkpoint.safetensors.tmp.$p"; done
    "$CUFM" "${TRAIN[@]}" --out run --resume --steps 2 >/dev/null || fail "the resumed run failed"
    [ "$(cat victim.txt)" = precious ] || fail "the planted link's target was overwritten"
    loads run/checkpoint.safetensors || fail "the checkpoint does not load"
    echo "faults_test planted-link: no planted link was followed"
    ;;

  two-runs)
    "$CUFM" "${TRAIN[@]}" --out run --steps 1000000 >/dev/null 2>&1 &
    first=$!
    for _ in $(seq 1 300); do
      [ -s run/.cufm.lock ] && break
      sleep 0.1
    done
    if [ ! -s run/.cufm.lock ]; then
      kill -9 "$first" 2>/dev/null
      fail "the first run took no lock within 30 s"
    fi
    err=$("$CUFM" "${TRAIN[@]}" --out run --resume --steps 5 2>&1)
    rc=$?
    kill -9 "$first" 2>/dev/null
    wait "$first" 2>/dev/null
    [ $rc -ne 0 ] || fail "a second run into a folder in use succeeded"
    [[ "$err" == *"another cufm train (pid $first) is writing to 'run'"* ]] || fail "the error does not name the first run: $err"
    echo "faults_test two-runs: the second run was refused, naming pid $first"
    ;;

  *)
    echo "usage: faults_test.sh <cufm> <work> kill9|full-disk|read-only|planted-link|two-runs" >&2
    exit 2
    ;;
esac
