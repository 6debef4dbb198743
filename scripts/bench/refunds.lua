-- POST /api/v1/payments/{id}/refund for 0.01, rotating over the captured payments in
-- BENCH_IDS_FILE: consecutive requests go to different payments, so they do not queue on
-- one row lock (refunds of one payment are serialized by design).
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local common = dofile(dir .. "common.lua")

local ids = common.load_ids()
local body = '{"amount":0.01,"reason":"load test"}'
local position = nil
local sent = 0

function request()
   if position == nil then
      position = (common.thread_id() * math.floor(#ids / common.threads)) % #ids
   end
   position = position % #ids + 1
   sent = sent + 1
   local headers = common.headers(true)
   if common.idempotency then
      headers["Idempotency-Key"] =
         string.format("%s-ref-%d-%d", common.run_id, common.thread_id(), sent)
   end
   return wrk.format("POST", "/api/v1/payments/" .. ids[position] .. "/refund", headers, body)
end

setup = common.setup
response = common.response
done = common.done
if common.paced then
   delay = common.delay
end
