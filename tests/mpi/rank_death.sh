#!/usr/bin/env bash
# Usage: rank_death.sh MPIEXEC BINARY. Runs BINARY (rank_death.cpp) on 3 ranks
# and checks that the job ends within 60 s, fails, names the dead rank, and
# leaves no process of the program running.
set -u
mpiexec=$1 bin=$2
out=$(mktemp)
start=$SECONDS
timeout -k 5 60 "$mpiexec" --oversubscribe -np 3 "$bin" </dev/null >"$out" 2>&1
rc=$?
took=$((SECONDS - start))
cat "$out"
fail() { echo "rank_death: $*" >&2; pkill -9 -f "^$bin( |$)"; rm -f "$out"; exit 1; }
[[ $rc -ne 124 ]] || fail "the job did not end within 60 s"
[[ $rc -ne 0 ]] || fail "the job succeeded although a rank was killed"
grep -q "rank 2" "$out" || fail "the output does not name rank 2"
grep -q "wrong" "$out" && fail "rank 0 returned from a map whose rank died"
sleep 1
if pgrep -f "^$bin( |$)" >/dev/null; then
  pgrep -af "^$bin( |$)" >&2
  fail "processes of the job are left running"
fi
echo "rank_death: ended in ${took} s with status $rc, nothing left"
rm -f "$out"
