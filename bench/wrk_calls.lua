-- wrk script: POST the call.ended sample as a different call each request (its data.id is the counter).
-- wrk -t1 -c32 -d10s -s bench/wrk_calls.lua http://127.0.0.1:PORT -- TEMPLATE_FILE FIRST_ID
local template
local counter = 0

function init(args)
  local file = assert(io.open(args[1], "rb"))
  template = file:read("*a")
  file:close()
  counter = tonumber(args[2] or "0")
end

function request()
  counter = counter + 1
  local body = template:gsub("__CALL_ID__", tostring(counter), 1)
  return wrk.format("POST", "/webhooks/aircall", { ["Content-Type"] = "application/json" }, body)
end
