-- wrk script for bench/load.py: an optional PUT body, optional pacing, and the results as
-- one JSON line (wrk's own text output has no p99.9 and rounds its units).
--   WRK_BODY=<bytes>     send PUTs with a body of that many bytes
--   WRK_DELAY_MS=<ms>    each connection waits this long between requests (a paced,
--                        below-saturation load for latency at a given rate)
local body = tonumber(os.getenv("WRK_BODY") or "0")
local pace = tonumber(os.getenv("WRK_DELAY_MS") or "0")

if body > 0 then
  wrk.method = "PUT"
  wrk.body = string.rep("x", body)
end

-- wrk arms a timer per request once a script defines delay(): only define it when pacing.
if pace > 0 then
  function delay()
    return pace
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"bytes":%d,"socket_errors":%d,"status_errors":%d,' ..
    '"p50_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max))
end
