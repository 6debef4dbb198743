-- GET /api/v1/payments?limit=20, in turn: the newest page, the newest captured payments
-- (status filter), and the page after one of the ids in BENCH_IDS_FILE (a cursor deep in
-- the merchant's history; each thread walks the ids from its own offset).
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local common = dofile(dir .. "common.lua")

local ids = common.load_ids()
local position = nil
local turn = 0

local function next_id()
   if position == nil then
      position = (common.thread_id() * math.floor(#ids / common.threads)) % #ids
   end
   position = position % #ids + 1
   return ids[position]
end

function request()
   turn = turn % 3 + 1
   local query = "limit=20"
   if turn == 2 then
      query = query .. "&status=captured"
   elseif turn == 3 then
      query = query .. "&starting_after=" .. next_id()
   end
   return wrk.format("GET", "/api/v1/payments?" .. query, common.headers(false))
end

setup = common.setup
response = common.response
done = common.done
if common.paced then
   delay = common.delay
end
