#!/usr/bin/env bash
# Turns the RESULT lines of a bench/run.sh log into markdown tables:
# medians over rounds (each round's value in brackets), ratios to
# graphile-worker batched and to the pgbench two-commit limit measured in
# the same run, and the targets of the performance issue.
#   bench/summarize.sh bench/out/run-XXXX.log
set -euo pipefail

log=$1
grep '^RESULT {' "$log" | sed 's/^RESULT //' | jq -rs '
def median: sort | if length == 0 then null
    elif length % 2 == 1 then .[(length - 1) / 2]
    else (.[length / 2 - 1] + .[length / 2]) / 2 end;
def r0: if . == null then "n/a" else (. | round | tostring) end;
def r1: if . == null then "n/a" else ((. * 10 | round) / 10 | tostring) end;
def x(a; b): if a == null or b == null or b == 0 then "n/a"
    else (((a / b) * 100 | round) / 100 | tostring) + "×" end;
def name: if .lib == "eav" then "eav (every transition audited)"
    elif .lib == "pgbench" then "pgbench " + .mode
    else .label end;
def tp(c): [.[] | select(.test == "throughput" and .concurrency == c
    and (.behind // 0) == 0 and (.audit_rows // 0) == 0)];
def cell(rows; who; c): [rows[] | select(name == who) | .process_jobs_per_s];
def mib: if . == null or . <= 0 then "n/a" else ((. / 1024 * 10 | round) / 10 | tostring) end;

. as $all
| ([$all[] | select(.test == "throughput") | .concurrency] | unique) as $cs
| ($cs | map(. as $c | {c: $c,
    gb: (cell($all | tp($c); "graphile-worker batched"; $c) | median),
    pg: (cell($all | tp($c); "pgbench two-commit"; $c) | median)})) as $base
| ([$all[] | select(.test == "throughput" and (.behind // 0) == 0
    and (.audit_rows // 0) == 0) | name] | unique) as $names
| "### Throughput: jobs/s, median of rounds (each round in brackets)\n",
  "| contender | " + ($cs | map("c=\(.) | × graphile batched | × pgbench two-commit") | join(" | ")) + " |",
  "|---|" + ($cs | map("---|---|---") | join("|")) + "|",
  ($names[] as $n | "| \($n) | " + ($base | map(. as $b
      | cell($all | tp($b.c); $n; $b.c) as $v
      | "**\($v | median | r0)** (\($v | map(r0) | join(", ")))"
        + " | " + x($v | median; $b.gb) + " | " + x($v | median; $b.pg))
      | join(" | ")) + " |"),
  "",
  "### Other figures",
  "| figure | eav | peers (same run) | target |",
  "|---|---|---|---|",
  ([$all[] | select(.lib == "eav" and .test == "latency")]) as $el
  | ([$all[] | select(.lib == "graphile-worker" and .test == "latency")]) as $gl
  | "| enqueue → start p50 / p99 (ms), median of runs | \([$el[].p50_ms] | median | r1) / \([$el[].p99_ms] | median | r1) | graphile-worker \([$gl[].p50_ms] | median | r1) / \([$gl[].p99_ms] | median | r1) | p50 ≤ 3, p99 ≤ 10, ≤ 0.5× graphile (\(x([$el[].p50_ms] | median; [$gl[].p50_ms] | median))) |",
  ([$all[] | select(.lib == "eav" and .test == "kill")][0]) as $k
  | "| worker SIGKILL → unknown outcome committed, p50 / p99 (ms) | \($k.p50_ms | r1) / \($k.p99_ms | r1) over \($k.count // 0) kills | see crash rows below | p50 ≤ 20, p99 ≤ 100 |",
  "| unknown → running again, p50 / p99 (ms after its back-off) | \($k.again_p50_ms | r1) / \($k.again_p99_ms | r1) | — | p99 ≤ 1000 + back-off |",
  ([$all[] | select(.lib == "eav" and .test == "killswitch")][0]) as $ks
  | "| kill switch engage → last claim committed, p50 / p99 (ms), under load; claims after an engage | \($ks.p50_ms | r1) / \($ks.p99_ms | r1) over \($ks.count // 0) engages; \($ks.claims_after_engage // "n/a") | — | p99 ≤ 50 ms, 0 claims |",
  ([$all[] | select(.lib == "eav" and .test == "http") | .calls_per_s]) as $h
  | "| HTTP tool calls/s against the local test server (tests/far/httpd), 4 workers, \([$all[] | select(.test == "http") | .n][0] // "n/a") calls; median of rounds (each) | \($h | median | r0) (\($h | map(r0) | join(", "))) | — | — |",
  ([$all[] | select(.lib == "eav" and .test == "throughput" and .rss_kib != null) | .rss_kib]) as $r
  | ([$all[] | select(.lib == "graphile-worker" and .rss_kib != null) | .rss_kib]) as $gr
  | ([$all[] | select(.lib == "pg-boss" and .rss_kib != null) | .rss_kib]) as $pr
  | "| peak RSS under load (MiB): eavd / worker / producer | \([$r[].eavd] | max | mib) / \([$r[].worker_max] | max | mib) / \([$r[].producer] | max | mib) | graphile-worker \($gr | max | mib), pg-boss \($pr | max | mib) (one node process enqueuing and working) | eavd ≤ 4, worker ≤ 8 |",
  ([$all[] | select(.lib == "eav" and .test == "throughput" and .uss_kib != null) | .uss_kib]) as $u
  | ([$all[] | select(.test == "memory floor")][0]) as $fl
  | "| a process that links only libpq and runs SELECT 1 (bench/pqfloor.c): peak RSS / private (MiB) | \($fl.rss_kib | mib) / \($fl.uss_kib | mib) | — | the floor under the eavd target |",
  "| private memory (USS: RSS less the shared library pages), peak of samples after each drain (MiB): eavd / worker / producer | \([$u[].eavd] | max | mib) / \([$u[].worker_max] | max | mib) / \([$u[].producer] | max | mib) | — | — |",
  ([$all[] | select(.lib == "eav" and .test == "throughput" and .behind == 10000 and .audit_rows == 0) | .process_jobs_per_s] | median) as $s10k
  | ([$all[] | select(.lib == "eav" and .test == "throughput" and .behind == 1000000) | .process_jobs_per_s] | median) as $s1m
  | ([$all[] | select(.lib == "eav" and .test == "throughput" and .audit_rows > 0) | .process_jobs_per_s] | median) as $saud
  | "| 20,000 steps with 1,000,000 vs 10,000 pending behind them | \($s1m | r0) vs \($s10k | r0) jobs/s: \(x($s1m; $s10k)) | — | ≥ 0.9× |",
  "| the same with 10,000,000 audit rows present | \($saud | r0) jobs/s: \(x($saud; $s10k)) | — | — |",
  "| enqueue (jobs/s, bulk: eav.enqueue_many, graphile add_jobs, pg-boss insert) | \([$all[] | select(.lib == "eav" and .test == "throughput") | .enqueue_jobs_per_s] | median | r0) | graphile-worker \([$all[] | select(.lib == "graphile-worker" and .test == "throughput") | .enqueue_jobs_per_s] | median | r0), pg-boss \([$all[] | select(.lib == "pg-boss" and .test == "throughput") | .enqueue_jobs_per_s] | median | r0) | — |"
'
crash=$(grep '^RESULT crash ' "$log" || true)
if [ -n "$crash" ]; then
	echo "| peers: worker SIGKILL → job running again (s, cap 120) | — | $(echo "$crash" |
	    sed 's/.*case=\([^ ]*\) rescue_s=\([^ ]*\).*/\1 \2/' | paste -sd, | sed 's/,/, /g') | — |"
fi
