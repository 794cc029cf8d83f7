-- wrk script for bench/bench.py.
--
--   wrk ... http://127.0.0.1:PORT/api -s bench/post.lua -- POST close '{"name":"app/bench"}' 'session=...'
--   wrk ... http://127.0.0.1:PORT/healthz -s bench/post.lua -- GET keep-alive
--
-- The arguments after `--` are the method, the connection mode (`close` sends
-- `Connection: close`, as nginx does to its upstream by default), optionally a JSON
-- body (sent with Content-Type: application/json; empty for none) and a Cookie header (the
-- session of one login, made once by bench.py and sent with every request). Every answer's status is counted, and done() prints
-- one line `BENCH_JSON {...}` with the totals, the latency percentiles (microseconds; also
-- every tenth of a percent, `quantiles_us`) and
-- the count of each status code, so that no non-2xx answer goes unseen.

local threads = {}

function setup(thread)
  -- Runs in the setup/done environment: keep each thread to read its counts at the end.
  table.insert(threads, thread)
end

function init(args)
  wrk.method = args[1] or "GET"
  if args[2] == "close" then
    wrk.headers["Connection"] = "close"
  end
  if args[3] and args[3] ~= "" then
    wrk.body = args[3]
    wrk.headers["Content-Type"] = "application/json"
  end
  if args[4] and args[4] ~= "" then
    wrk.headers["Cookie"] = args[4]
  end
  statuses = {}
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local counts = {}
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses") or {}) do
      counts[status] = (counts[status] or 0) + count
    end
  end
  local parts = {}
  for status, count in pairs(counts) do
    table.insert(parts, string.format('"%d":%d', status, count))
  end
  -- The latency at every tenth of a percent, so that rounds can be merged into one
  -- distribution (bench.py: the posts of several rounds during a drain).
  local quantiles = {}
  for i = 1, 1000 do
    table.insert(quantiles, string.format("%d", latency:percentile(i / 10)))
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"duration_us":%d,"requests":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f},' ..
    '"quantiles_us":[%s],' ..
    '"statuses":{%s}}\n',
    summary.duration, summary.requests, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean,
    table.concat(quantiles, ","),
    table.concat(parts, ",")))
end
