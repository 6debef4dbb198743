-- GET /api/v1/payments/{id}, walking the ids in BENCH_IDS_FILE (each thread starts at its
-- own offset), so reads spread over many rows instead of hitting one cached page.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local common = dofile(dir .. "common.lua")

local ids = common.load_ids()
local position = nil

function request()
   if position == nil then
      position = (common.thread_id() * math.floor(#ids / common.threads)) % #ids
   end
   position = position % #ids + 1
   return wrk.format("GET", "/api/v1/payments/" .. ids[position], common.headers(false))
end

setup = common.setup
response = common.response
done = common.done
if common.paced then
   delay = common.delay
end
