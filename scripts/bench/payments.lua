-- POST /api/v1/payments/process with the approved test card 4242 4242 4242 4242,
-- a fresh Idempotency-Key per request (BENCH_IDEMPOTENCY=0 sends none).
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local common = dofile(dir .. "common.lua")

local amount = os.getenv("BENCH_AMOUNT") or "25.00"
local body = string.format(
   '{"merchant_id":"%s","amount":%s,"currency":"USD","payment_method":"credit_card",'
      .. '"card_data":{"card_number":"4242424242424242","expiry_month":12,"expiry_year":2030,'
      .. '"cvv":"123","cardholder_name":"Bench Runner"},'
      .. '"description":"load test","metadata":{"run":"%s"}}',
   common.merchant,
   amount,
   common.run_id
)
local sent = 0

function request()
   sent = sent + 1
   local headers = common.headers(true)
   if common.idempotency then
      headers["Idempotency-Key"] =
         string.format("%s-pay-%d-%d", common.run_id, common.thread_id(), sent)
   end
   return wrk.format("POST", "/api/v1/payments/process", headers, body)
end

setup = common.setup
response = common.response
done = common.done
if common.paced then
   delay = common.delay
end
