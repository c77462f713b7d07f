-- wrk: POST batches of notifications to /api/notifications/batch, each item with a fresh idempotency key and the
-- body of bench/post.lua. `wrk ... -s batch_post.lua URL -- RUNTAG SIZE`
local counter = 0
local threads = 0
local tag = "run"
local size = 100
-- `tid` is a global: setup() sets it in each thread's own Lua state (a local here would hide it).
tid = 0

function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

function init(args)
  tag = args[1] or "run"
  size = tonumber(args[2] or "100")
end

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

request = function()
  local items = {}
  for i = 1, size do
    counter = counter + 1
    local key = string.format("%s-%d-%d", tag, tid, counter)
    items[i] = '{"idempotency_key":"' .. key .. '","recipient":"user' .. counter ..
      '@example.com","channel":"log","message":"Hello, this is a notification body of roughly one hundred and sixty' ..
      ' characters used for the intake benchmark; it is padded to be realistic....."}'
  end
  return wrk.format(nil, nil, nil, '{"notifications":[' .. table.concat(items, ",") .. ']}')
end
