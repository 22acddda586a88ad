-- POST /nacos/v1/ns/instance: registers distinct instances, BENCH_PER_THREAD per wrk thread;
-- past that it registers the last one again (which adds nothing) until wrk is stopped, so that
-- no connection closes with a request in flight and exactly that many exist. Parameters in the
-- query string, as the Node and Python clients send them.
package.path = os.getenv("BENCH_WRK_DIR") .. "/?.lua;" .. package.path
local c = require("common")

setup = c.setup
local n = 0

request = function()
  local i = c.base() + math.min(n, c.per_thread - 1)
  n = n + 1
  local path = "/nacos/v1/ns/instance?serviceName=" .. c.service(i)
    .. "&ip=" .. c.ip(i) .. "&port=8080&ephemeral=true&metadata=" .. c.metadata
  return wrk.format("POST", path)
end

response = function(status, headers, body)
  if status ~= 200 then
    io.stderr:write("register answered " .. status .. ": " .. body .. "\n")
  end
end
