-- Shared by the wrk scripts of scripts/bench.py: configuration from the environment,
-- request pacing, status counting, and the one-line JSON summary bench.py parses.
--
-- Environment (set by bench.py):
--   BENCH_API_KEY, BENCH_MERCHANT   the merchant's bearer key and id
--   BENCH_RUN_ID                    prefix making Idempotency-Keys unique per phase
--   BENCH_IDEMPOTENCY               "1" (default): send a fresh Idempotency-Key per POST
--   BENCH_RATE                      target requests/s for the whole run; 0 = unpaced
--   BENCH_THREADS, BENCH_CONNECTIONS  the wrk -t / -c values (for pacing arithmetic)
--   BENCH_IDS_FILE                  transaction ids, one a line (reads and refunds)
--
-- Pacing. wrk (4.x, not wrk2) has no rate limiter: a script's delay() is asked, before
-- every request of a connection, how many milliseconds to wait. That is closed-loop: a
-- connection never has two requests in flight, so when every connection is busy the
-- offered rate drops instead of queueing, and latency excludes the time a request would
-- have waited (coordinated omission). We approximate a fixed rate as well as a closed
-- loop can: each wrk thread hands out send slots on a fixed schedule (one every
-- threads/rate seconds, read from a monotonic clock through LuaJIT's FFI), a connection
-- that asks for a slot waits for the next free one, and a late schedule is not caught up
-- in a burst. With enough idle connections (rate x latency << connections) the achieved
-- rate is the target; bench.py reports the achieved rate next to it. Without the FFI the
-- fallback is a fixed per-connection delay of connections/rate seconds, which runs
-- slower than the target by each request's latency.

local M = {}

local function required(name)
   local value = os.getenv(name)
   if value == nil or value == "" then
      error(name .. " is not set (run this through scripts/bench.py)")
   end
   return value
end

M.api_key = required("BENCH_API_KEY")
M.merchant = required("BENCH_MERCHANT")
M.run_id = os.getenv("BENCH_RUN_ID") or tostring(os.time())
M.idempotency = (os.getenv("BENCH_IDEMPOTENCY") or "1") ~= "0"
M.rate = tonumber(os.getenv("BENCH_RATE") or "0") or 0
M.threads = tonumber(os.getenv("BENCH_THREADS") or "1") or 1
M.connections = tonumber(os.getenv("BENCH_CONNECTIONS") or "1") or 1

-- A monotonic clock in milliseconds, when LuaJIT's FFI is there (Debian's wrk has it).
local now_ms = nil
do
   local ok, ffi = pcall(require, "ffi")
   if ok then
      pcall(ffi.cdef, [[
         typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
         int clock_gettime(int clock_id, bench_timespec *tp);
      ]])
      local ts = ffi.new("bench_timespec")
      local CLOCK_MONOTONIC = 1
      now_ms = function()
         ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
         return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
      end
   end
end

M.paced = M.rate > 0
M.pacing = "unpaced"
local interval_ms = nil
if M.paced then
   if now_ms then
      interval_ms = 1000 * M.threads / M.rate
      M.pacing = "per-thread schedule"
   else
      interval_ms = 1000 * M.connections / M.rate
      M.pacing = "per-connection delay"
   end
end

local next_slot = nil

-- wrk calls this before each request when the script defines a global delay().
function M.delay()
   if now_ms == nil then
      return interval_ms
   end
   local now = now_ms()
   local slot = next_slot or now
   if slot < now then
      slot = now -- behind schedule: send now, no catch-up burst
   end
   next_slot = slot + interval_ms
   return slot - now
end

-- Per-thread counters (globals of the thread's Lua state, read back in done()).
statuses = {}
codes = {}

function M.response(status, headers, body)
   local key = tostring(status)
   statuses[key] = (statuses[key] or 0) + 1
   if status >= 300 and body then
      local code = string.match(body, '"code"%s*:%s*"([%w_]+)"') or "none"
      codes[code] = (codes[code] or 0) + 1
   end
end

-- The thread's id (0-based), set by setup() before the thread runs.
function M.thread_id()
   return tonumber(tid) or 0
end

local threads = {}

function M.setup(thread)
   thread:set("tid", #threads)
   table.insert(threads, thread)
end

-- Transaction ids for reads and refunds, one a line.
function M.load_ids()
   local path = required("BENCH_IDS_FILE")
   local ids = {}
   for line in io.lines(path) do
      if line ~= "" then
         ids[#ids + 1] = line
      end
   end
   if #ids == 0 then
      error("no transaction ids in " .. path)
   end
   return ids
end

function M.headers(with_body)
   local headers = { ["Authorization"] = "Bearer " .. M.api_key }
   if with_body then
      headers["Content-Type"] = "application/json"
   end
   return headers
end

-- Minimal JSON for the summary: tables with string keys or array parts, numbers, strings.
local function encode(value)
   local kind = type(value)
   if kind == "number" then
      if value ~= value or value == math.huge or value == -math.huge then
         return "null"
      end
      return string.format("%.17g", value)
   elseif kind == "string" then
      return '"' .. value:gsub('[%c"\\]', function(c)
         return string.format("\\u%04x", c:byte())
      end) .. '"'
   elseif kind == "boolean" then
      return tostring(value)
   elseif kind == "table" then
      local parts = {}
      for k, v in pairs(value) do
         parts[#parts + 1] = encode(tostring(k)) .. ":" .. encode(v)
      end
      return "{" .. table.concat(parts, ",") .. "}"
   end
   return "null"
end

local function merge(into, from)
   for k, v in pairs(from or {}) do
      into[k] = (into[k] or 0) + v
   end
end

function M.done(summary, latency, requests)
   local all_statuses, all_codes = {}, {}
   for _, thread in ipairs(threads) do
      merge(all_statuses, thread:get("statuses"))
      merge(all_codes, thread:get("codes"))
   end
   local out = {
      requests = summary.requests,
      duration_us = summary.duration,
      bytes = summary.bytes,
      socket_errors = {
         connect = summary.errors.connect,
         read = summary.errors.read,
         write = summary.errors.write,
         timeout = summary.errors.timeout,
      },
      latency_us = {
         min = latency.min,
         max = latency.max,
         mean = latency.mean,
         stdev = latency.stdev,
         p50 = latency:percentile(50),
         p90 = latency:percentile(90),
         p95 = latency:percentile(95),
         p99 = latency:percentile(99),
         p999 = latency:percentile(99.9),
      },
      statuses = all_statuses,
      codes = all_codes,
      pacing = M.pacing,
      target_rate = M.rate,
   }
   io.write("BENCH_JSON " .. encode(out) .. "\n")
end

return M
