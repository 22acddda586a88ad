-- Shared by the wrk scripts of benches/rnacos_compare.sh: which instance a request names.
--
-- Every wrk process drives one node and gets its own range of instance indexes
-- (BENCH_OFFSET); within it each wrk thread takes BENCH_PER_THREAD indexes. Index i is the
-- instance 10.a.b.c:8080 (a.b.c = the 24 bits of i) of service bench-svc-(i % BENCH_SERVICES)
-- in DEFAULT_GROUP, public namespace. The same indexes name the same instances in every
-- script, so that the beat and list scripts find what the register script made.
local M = {}

M.services = tonumber(os.getenv("BENCH_SERVICES") or "100")
M.offset = tonumber(os.getenv("BENCH_OFFSET") or "0")
M.per_thread = tonumber(os.getenv("BENCH_PER_THREAD") or "1000000")
-- Long leases (Nacos's `preserved.*` metadata) so that what the memory phase registers is
-- still there when it is measured: {"preserved.heart.beat.timeout":"3600000",
-- "preserved.ip.delete.timeout":"3600000"}, URL-encoded.
M.metadata = "%7B%22preserved.heart.beat.timeout%22%3A%223600000%22%2C"
  .. "%22preserved.ip.delete.timeout%22%3A%223600000%22%7D"

function M.ip(i)
  return string.format("10.%d.%d.%d", math.floor(i / 65536) % 256, math.floor(i / 256) % 256, i % 256)
end

function M.service(i)
  return "bench-svc-" .. (i % M.services)
end

-- Gives each wrk thread its number (wrk calls setup once per thread, in the main Lua state).
local next_thread = 0
function M.setup(thread)
  thread:set("tid", next_thread)
  next_thread = next_thread + 1
end

-- The first index of this thread's range (call from init/request: `tid` is set by then).
function M.base()
  return M.offset + (tid or 0) * M.per_thread
end

return M
