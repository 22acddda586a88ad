-- GET /nacos/v1/ns/instance/list: the instances of each bench service in turn (what the Node
-- and Python clients poll every cacheMillis for a subscribed service).
package.path = os.getenv("BENCH_WRK_DIR") .. "/?.lua;" .. package.path
local c = require("common")

setup = c.setup
local n = 0

request = function()
  n = n + 1
  return wrk.format("GET", "/nacos/v1/ns/instance/list?serviceName=" .. c.service(n) .. "&healthyOnly=false")
end

response = function(status, headers, body)
  if status ~= 200 then
    io.stderr:write("list answered " .. status .. ": " .. body .. "\n")
  end
end
