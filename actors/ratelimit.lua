-- A producer key's token bucket, shared by every API process: the decision and the update in one script run.
--
-- KEYS[1] = the key's bucket hash {tokens, refilled (ms)}. ARGV[1] = rate per second, ARGV[2] = cost.
-- Returns 0 when admitted, else the milliseconds until the request would be.
-- The bucket holds one second's worth (at least one token) and starts full. A request costing more than the bucket
-- holds is admitted once the bucket is full, leaving it in debt, so a batch larger than a second's worth still
-- goes through and the average holds.

local rate, cost = tonumber(ARGV[1]), tonumber(ARGV[2])
local burst = math.max(1, rate)
-- Redis's clock, not the API process's: skewed hosts must share one bucket.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local tokens = burst
local saved = redis.call('HMGET', KEYS[1], 'tokens', 'refilled')
if saved[1] then
    tokens = math.min(burst, tonumber(saved[1]) + math.max(0, now - tonumber(saved[2])) * rate / 1000)
end
local needed = math.min(cost, burst)
if tokens < needed then
    return math.ceil((needed - tokens) * 1000 / rate)
end
tokens = tokens - cost
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'refilled', string.format('%d', now))
-- A full bucket is the same as none: the key goes once it would be full again.
redis.call('PEXPIRE', KEYS[1], math.max(1, math.ceil((burst - tokens) * 1000 / rate)))
return 0
