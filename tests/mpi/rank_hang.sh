#!/usr/bin/env bash
# Usage: rank_hang.sh MPIEXEC BINARY. Runs BINARY (rank_hang.cpp) on 3 ranks,
# one of which stops itself: the job must end within 90 s with every item done
# (run again on the other rank), say which rank stopped answering, and leave
# no process of the program running.
set -u
mpiexec=$1 bin=$2
out=$(mktemp)
start=$SECONDS
timeout -k 5 90 "$mpiexec" --oversubscribe -np 3 "$bin" </dev/null >"$out" 2>&1 &
launcher=$!
# Open MPI 4.1's mpiexec sometimes stays after every rank of the job has
# ended (it printed that the job was aborted, and waits on nothing of ours):
# once no rank runs, it gets 10 s, then it is ended and the linger reported.
gone_since=
while kill -0 "$launcher" 2>/dev/null; do
  if ! pgrep -f "^$bin( |$)" >/dev/null && grep -q "rank 0: 200 of 200" "$out"; then
    gone_since=${gone_since:-$SECONDS}
    if ((SECONDS - gone_since >= 10)); then
      echo "rank_hang: every rank ended; mpiexec had not after 10 s more, so it is ended here" >&2
      pkill -9 -P "$launcher" 2>/dev/null
      kill -9 "$launcher" 2>/dev/null
      break
    fi
  fi
  sleep 0.2
done
wait "$launcher"
rc=$?
took=$((SECONDS - start))
cat "$out"
# A stopped rank keeps a failed run's job alive: kill what is left, then say why.
fail() { echo "rank_hang: $*" >&2; pkill -9 -f "^$bin( |$)"; rm -f "$out"; exit 1; }
if [[ $rc -eq 124 ]] || ((took >= 90)); then
  ps -eo pid,ppid,stat,wchan:20,cmd | grep -E "mpi|orte|$(basename "$bin")" | grep -v grep >&2
  fail "the job did not end within 90 s"
fi
grep -q "rank 0: 200 of 200 items ok" "$out" || fail "rank 0 did not get every item"
grep -q "rank(s) 2 (host .*) stopped answering" "$out" || fail "nothing says rank 2 stopped answering"
sleep 1
if pgrep -f "^$bin( |$)" >/dev/null; then
  pgrep -af "^$bin( |$)" >&2
  fail "processes of the job are left running"
fi
echo "rank_hang: ended in ${took} s with status $rc, nothing left"
rm -f "$out"
