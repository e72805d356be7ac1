#!/usr/bin/env bash
# Fault trials: real 3-rank jobs over TCP sockets, shared memory (a TCP communicator on one host) and MPI in which one rank is SIGKILLed ("kill") or SIGSTOPped ("freeze")
# at a random moment while the ranks run collectives (all-reduce out of place and in place, all-gather,
# reduce-scatter) in a loop on fresh random data (the rank program is native/tests/fault_check.c --trial).
#
#   scripts/fault-trials.sh [N] [KIND...]     N trials of each fault per kind (default 20); KIND tcp (sockets:
#                                             SHARDWISE_TRANSPORT=tcp), shm (shared memory: SHARDWISE_TRANSPORT=shm),
#                                             mpi (default all three)
#
# Each trial checks that
#   - no process hangs: every survivor exits within the collective timeout + a margin after the fault (else "hung",
#     and it is killed);
#   - every survivor's error names the failed rank and no other as missing or lost ("wrong rank": the verdict's
#     blamed list is not exactly the victim; "no verdict": the survivor printed none, e.g. ended by mpirun);
#   - the outputs obey the failed-collective contract (docs/errors.md): the receive region untouched or all NaN,
#     an in-place all-reduce's input kept, and every collective that succeeded right ("contract").
# Prints one line per trial and a summary table; exits 1 when any trial failed a check, 0 otherwise.
#
# Environment: SW_FAULT_BIN (the fault_check program; default build/native/bin/fault_check),
#   SW_FAULT_TIMEOUT_MS (the communicators' timeout, default 3000), SW_FAULT_MARGIN_S (default 10),
#   SW_FAULT_BUDGET_S (the whole run's time bound, default 1500: trials not started by then are reported as skipped),
#   SW_FAULT_FAULTS (default "kill freeze": which faults to try),
#   SW_FAULT_KEEP=1 keeps each trial's folder (outputs) under /tmp,
#   SW_FAULT_MPIRUN_ARGS (default --enable-recovery: mpirun lets the survivors of a killed rank run on, so that they
#   see the failure themselves and their outputs can be checked; set it empty for mpirun's default, which ends every
#   process with SIGTERM: a survivor then counts as passing when its SIGTERM message, printed by Shardwise, names the
#   victim as the rank it was waiting for, "ended by mpirun" in the table).
# Linux only (signals, /proc). MPI trials need mpirun (Open MPI) and the MPI plugin; they are skipped otherwise.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

N="${1:-20}"
shift || true
KINDS=("$@")
((${#KINDS[@]})) || KINDS=(tcp shm mpi)
[[ "$N" =~ ^[0-9]+$ ]] || { echo "fault-trials: N must be a number of trials, got '$N'" >&2; exit 2; }
for k in "${KINDS[@]}"; do
    [[ "$k" == tcp || "$k" == shm || "$k" == mpi ]] || { echo "fault-trials: KIND must be tcp, shm or mpi, got '$k'" >&2; exit 2; }
done
BIN="${SW_FAULT_BIN:-build/native/bin/fault_check}"
TIMEOUT_MS="${SW_FAULT_TIMEOUT_MS:-3000}"
MARGIN_S="${SW_FAULT_MARGIN_S:-10}"
BUDGET_S="${SW_FAULT_BUDGET_S:-1500}"
[[ -x "$BIN" ]] || { echo "fault-trials: $BIN not built (./build.sh native)" >&2; exit 2; }
P=3
START=$SECONDS
# Every process of a trial is killed at this bound whatever happens (setup + run + timeout + margin).
HARD_S=$((60 + TIMEOUT_MS / 1000 + MARGIN_S))

MPIRUN_ARGS="${SW_FAULT_MPIRUN_ARGS---enable-recovery}"
declare -A TRIALS HUNG WRONG NOVERDICT CONTRACT SKIPPED MAXMS SUMMS ENDED
now_ms() { date +%s%3N; }
# running PID: the process exists and is neither a zombie nor dead (a survivor is reaped by its timeout wrapper)
running() {
    local state
    state=$(awk '/^State:/ {print $2}' "/proc/$1/status" 2>/dev/null)
    [[ -n $state && $state != Z && $state != X ]]
}

# run_trial KIND FAULT I: one trial; prints its line and adds to the counters.
run_trial() {
    local kind=$1 fault=$2 i=$3 key="$1 $2"
    local dir seed victim port t0 struck pids=() mpirun_pid="" r
    dir="$(mktemp -d /tmp/sw_fault_trial.XXXXXX)"
    seed=$(( (RANDOM << 30) ^ (RANDOM << 15) ^ RANDOM ))
    victim=$((RANDOM % P))
    if [[ $kind == tcp || $kind == shm ]]; then
        port=$("$BIN" --free-port)
        for ((r = 0; r < P; r++)); do
            SHARDWISE_TRANSPORT=$kind timeout -s KILL "$HARD_S" "$BIN" --trial tcp "$r" "$P" "$port" "$TIMEOUT_MS" "$seed" "$dir" >"$dir/out.$r" 2>&1 &
            pids+=($!)
            disown $! # no "Killed" job reports from bash: the checks below say what happened
        done
    else
        # shellcheck disable=SC2086 # MPIRUN_ARGS: words
        timeout -s KILL "$HARD_S" mpirun --allow-run-as-root --oversubscribe $MPIRUN_ARGS -n "$P" \
            "$BIN" --trial mpi "$TIMEOUT_MS" "$seed" "$dir" >"$dir/out" 2>&1 &
        mpirun_pid=$!
        disown $!
    fi
    # wait until every rank runs its collectives (each writes pid.RANK after a few)
    t0=$SECONDS
    while (($(ls "$dir" | grep -c '^pid\.') < P)) && ((SECONDS - t0 < 40)); do sleep 0.05; done
    if (($(ls "$dir" | grep -c '^pid\.') < P)); then
        echo "$kind $fault #$i: the job did not start (see $dir)"
        cat "$dir"/out* 2>/dev/null | tail -5
        TRIALS[$key]=$((${TRIALS[$key]:-0} + 1)); NOVERDICT[$key]=$((${NOVERDICT[$key]:-0} + P - 1))
        for p in "${pids[@]}" $mpirun_pid; do kill -KILL "$p" 2>/dev/null; done
        return
    fi
    local vpid
    vpid=$(cat "$dir/pid.$victim")
    sleep "0.$(printf '%03d' $((RANDOM % 1000)))"
    struck=$(now_ms)
    if [[ $fault == kill ]]; then kill -KILL "$vpid"; else kill -STOP "$vpid"; fi
    # every survivor must be gone by the timeout + margin
    local survivors=() deadline hung=0
    for ((r = 0; r < P; r++)); do ((r == victim)) || survivors+=("$(cat "$dir/pid.$r")"); done
    deadline=$((struck + TIMEOUT_MS + MARGIN_S * 1000))
    while (($(now_ms) < deadline)); do
        local alive=0
        for p in "${survivors[@]}"; do
            # a zombie of ours counts as gone
            if running "$p"; then alive=1; fi
        done
        ((alive)) || break
        sleep 0.05
    done
    local ended
    ended=$(now_ms)
    local hung_notes=""
    for p in "${survivors[@]}"; do
        if running "$p"; then
            hung=$((hung + 1))
            hung_notes+=" [pid $p hung: stacks in $dir/hung.$p]"
            # where it hangs, for the report (gdb when there is one)
            if command -v gdb >/dev/null; then
                timeout 30 gdb -p "$p" -batch -ex "thread apply all bt 15" >"$dir/hung.$p" 2>&1
            else
                cat "/proc/$p/task/"*/stack >"$dir/hung.$p" 2>&1
            fi
            kill -KILL "$p" 2>/dev/null
        fi
    done
    kill -KILL "$vpid" 2>/dev/null
    # the rest of the job (timeout wrappers, mpirun) ends with its ranks
    for p in "${pids[@]}" $mpirun_pid; do
        for ((w = 0; w < 100; w++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
        kill -KILL "$p" 2>/dev/null
    done
    # the verdicts
    local wrong=0 noverdict=0 contract=0 byterm=0 notes="$hung_notes" line out
    for ((r = 0; r < P; r++)); do
        ((r == victim)) && continue
        if [[ $kind != mpi ]]; then out="$dir/out.$r"; else out="$dir/out"; fi
        line=$(grep -a "^VERDICT rank=$r " "$out" | head -1)
        if [[ -z $line ]] && grep -aq "^shardwise: rank $r (pid [0-9]*): ended by SIGTERM" "$out"; then
            # ended by mpirun: its last words name the ranks it was waiting for (outputs died with the process)
            byterm=$((byterm + 1))
            line=$(grep -a -m1 "^shardwise: rank $r (pid [0-9]*): ended by SIGTERM" "$out")
            local names=""
            [[ $line == *"rank(s) "* ]] && names=$(sed 's/.*rank(s) //; s/, /,/g' <<<"$line")
            if [[ $names != "$victim" ]]; then
                wrong=$((wrong + 1))
                notes+=" [rank $r ended by mpirun, waiting for '${names:--}']"
            fi
            continue
        fi
        if [[ -z $line ]]; then
            noverdict=$((noverdict + 1))
            local why
            why=$(grep -a -m1 "shardwise: rank $r" "$out" | cut -c1-200)
            notes+=" [rank $r: no verdict${why:+: $why}]"
            continue
        fi
        [[ $line == *" contract=ok "* ]] || { contract=$((contract + 1)); notes+=" [rank $r: ${line#* contract=}]"; }
        local blamed=${line#* blamed=}
        blamed=${blamed%% *}
        if [[ $blamed != "$victim" ]]; then
            wrong=$((wrong + 1))
            notes+=" [rank $r blamed '$blamed': ${line#* msg=}]"
        fi
        [[ $line == *" status=0 "* ]] && notes+=" [rank $r saw no failure]"
    done
    local took=$((ended - struck))
    TRIALS[$key]=$((${TRIALS[$key]:-0} + 1))
    HUNG[$key]=$((${HUNG[$key]:-0} + hung))
    WRONG[$key]=$((${WRONG[$key]:-0} + wrong))
    NOVERDICT[$key]=$((${NOVERDICT[$key]:-0} + noverdict))
    CONTRACT[$key]=$((${CONTRACT[$key]:-0} + contract))
    ENDED[$key]=$((${ENDED[$key]:-0} + byterm))
    SUMMS[$key]=$((${SUMMS[$key]:-0} + took))
    ((took > ${MAXMS[$key]:-0})) && MAXMS[$key]=$took
    local ok="ok"
    ((hung + wrong + noverdict + contract)) && ok="FAILED"
    printf '%s %-6s #%-3d victim %d: %-6s survivors done %5d ms after the fault%s\n' "$kind" "$fault" "$i" "$victim" "$ok" "$took" "$notes"
    if [[ $ok == FAILED || -n ${SW_FAULT_KEEP:-} ]]; then echo "    (outputs kept in $dir)"; else rm -rf "$dir"; fi
}

for kind in "${KINDS[@]}"; do
    if [[ $kind == mpi ]]; then
        if ! command -v mpirun >/dev/null; then
            echo "fault-trials: mpi skipped: mpirun not found"
            SKIPPED["mpi kill"]=$N; SKIPPED["mpi freeze"]=$N
            continue
        fi
        if ! "$BIN" --mpi-info >/dev/null 2>&1; then
            echo "fault-trials: mpi $("$BIN" --mpi-info | head -1)"
            SKIPPED["mpi kill"]=$N; SKIPPED["mpi freeze"]=$N
            continue
        fi
    fi
    for fault in ${SW_FAULT_FAULTS:-kill freeze}; do
        for ((i = 1; i <= N; i++)); do
            if ((SECONDS - START > BUDGET_S)); then
                SKIPPED["$kind $fault"]=$((${SKIPPED["$kind $fault"]:-0} + 1))
                continue
            fi
            run_trial "$kind" "$fault" "$i"
        done
    done
done

echo
echo "fault trials: $P ranks, timeout $TIMEOUT_MS ms, margin $MARGIN_S s, mpirun args '${MPIRUN_ARGS}', $((SECONDS - START)) s in all"
printf '%-5s %-7s %7s %5s %11s %11s %10s %16s %8s %9s %9s\n' kind fault trials hung wrong-rank no-verdict contract "ended by mpirun" skipped "mean ms" "max ms"
bad=0
for kind in "${KINDS[@]}"; do
    for fault in kill freeze; do
        key="$kind $fault"
        t=${TRIALS[$key]:-0}
        mean=0
        ((t)) && mean=$((${SUMMS[$key]:-0} / t))
        printf '%-5s %-7s %7d %5d %11d %11d %10d %16d %8d %9d %9d\n' "$kind" "$fault" "$t" "${HUNG[$key]:-0}" "${WRONG[$key]:-0}" \
            "${NOVERDICT[$key]:-0}" "${CONTRACT[$key]:-0}" "${ENDED[$key]:-0}" "${SKIPPED[$key]:-0}" "$mean" "${MAXMS[$key]:-0}"
        bad=$((bad + ${HUNG[$key]:-0} + ${WRONG[$key]:-0} + ${NOVERDICT[$key]:-0} + ${CONTRACT[$key]:-0}))
    done
done
echo "(hung, wrong-rank, no-verdict, contract: survivors; mean/max ms: from the fault until every survivor had exited)"
if ((bad)); then
    echo "fault trials: FAILED ($bad survivor check(s) failed)"
    exit 1
fi
echo "fault trials: passed"
