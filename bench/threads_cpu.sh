#!/bin/bash
# CPU of every thread of `engine serve` and of its processing process under wrk, per webhook: where the time of
# the gateway goes (bench/RESULTS.md, "The pipeline in stages"). Needs wrk; run from the repository root:
#   bench/threads_cpu.sh            # processing running
#   bench/threads_cpu.sh pause      # the processing process stopped during the load: the gateway alone
#   NICENESS=0 bench/threads_cpu.sh # the processing threads reniced first (the bench only; the engine sets 10)
set -euo pipefail
tmp=$(mktemp -d)
port=${PORT:-18555}
token=$(python -c "from tests.harness import TOKEN; print(TOKEN)")
python - "$tmp/template.json" "$token" <<'PY'
import json, sys
envelope = json.load(open("tests/fixtures/call.ended.json"))
envelope["token"], envelope["data"]["id"] = sys.argv[2], 918273645546372819
open(sys.argv[1], "w").write(json.dumps(envelope).replace("918273645546372819", "__CALL_ID__"))
PY
AIRCALL_WEBHOOK_TOKEN=$token ENGINE_DB=$tmp/outbox.sqlite3 ENGINE_LOG_LEVEL=warning \
  engine serve --port "$port" > "$tmp/engine.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$tmp"' EXIT
for _ in $(seq 50); do curl -sf "localhost:$port/healthz" > /dev/null && break; sleep 0.2; done
child=$(pgrep -P $server | head -1)
if [ -n "${NICENESS:-}" ]; then
  sleep 1  # the child's own os.nice first
  for t in /proc/$child/task/*; do renice -n "$NICENESS" -p "$(basename "$t")" > /dev/null; done
fi
echo "processing threads at niceness $(ps -o ni= -L -p "$child" | sort -u | tr -s ' \n' ' ')"
[ "${1:-}" = pause ] && kill -STOP "$child"
ticks() { for pid in $server $child; do for t in /proc/$pid/task/*; do
  echo "$pid/$(basename "$t") $(cat "$t/comm") $(awk '{print $14 + $15}' "$t/stat")"; done; done; }
ticks > "$tmp/before"
wrk -t1 -c32 -d10s -s bench/wrk_calls.lua "http://127.0.0.1:$port" -- "$tmp/template.json" 1 > "$tmp/wrk.txt"
ticks > "$tmp/after"
[ "${1:-}" = pause ] && kill -CONT "$child"
requests=$(awk '/requests in/ {print $1}' "$tmp/wrk.txt")
grep "Requests/sec" "$tmp/wrk.txt"
echo "pid/tid: CPU µs per webhook, user + system (the processing process is the other pid)"
join <(sort "$tmp/before") <(sort "$tmp/after") | awk -v n="$requests" -v hz="$(getconf CLK_TCK)" \
  '{ d = $5 - $3; split($1, id, "/"); what = (id[1] == id[2]) ? "main thread" : "thread"
     if (d > 2) printf "  %-14s %-12s %6.1f\n", $1, what, d * 1e6 / hz / n }'
