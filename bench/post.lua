-- wrk: POST one notification per request, each with a fresh idempotency key.
-- The same body goes to our API and to both baselines. `wrk ... -s post.lua URL -- RUNTAG [API_KEY]`
local counter = 0
local threads = 0
local tag = "run"
-- `tid` is a global: setup() sets it in each thread's own Lua state (a local here would hide it).
tid = 0

function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

function init(args)
  tag = args[1] or "run"
  -- A producer key, when given: the rate-limit phase posts as one producer.
  if args[2] then
    wrk.headers["Authorization"] = "Bearer " .. args[2]
  end
end

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

request = function()
  counter = counter + 1
  local key = string.format("%s-%d-%d", tag, tid, counter)
  local body = '{"idempotency_key":"' .. key .. '","recipient":"user' .. counter ..
    '@example.com","channel":"log","message":"Hello, this is a notification body of roughly one hundred and sixty' ..
    ' characters used for the intake benchmark; it is padded to be realistic....."}'
  return wrk.format(nil, nil, nil, body)
end
