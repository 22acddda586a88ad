-- PUT /nacos/v1/ns/instance/beat: full beats (the `beat` JSON the Node and Python clients send)
-- for the instances register.lua made, cycling over this thread's BENCH_PER_THREAD of them.
package.path = os.getenv("BENCH_WRK_DIR") .. "/?.lua;" .. package.path
local c = require("common")

setup = c.setup
local n = 0

local function urlencode(s)
  return (s:gsub("[^%w%-_%.]", function(ch) return string.format("%%%02X", string.byte(ch)) end))
end

request = function()
  local i = c.base() + (n % c.per_thread)
  n = n + 1
  local svc = "DEFAULT_GROUP@@" .. c.service(i)
  local beat = string.format(
    '{"serviceName":"%s","ip":"%s","port":8080,"cluster":"DEFAULT","weight":1,"metadata":{},"scheduled":true}',
    svc, c.ip(i))
  local path = "/nacos/v1/ns/instance/beat?serviceName=" .. urlencode(svc) .. "&beat=" .. urlencode(beat)
  return wrk.format("PUT", path)
end

response = function(status, headers, body)
  if status ~= 200 then
    io.stderr:write("beat answered " .. status .. ": " .. body .. "\n")
  end
end
