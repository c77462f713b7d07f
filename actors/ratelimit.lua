-- A producer key's token bucket, shared by every API process: the decision and the update in one script run.
--
-- KEYS[1] = the key's bucket hash {tokens, refilled (ms)}. ARGV[1] = rate per second, ARGV[2] = cost,
-- ARGV[3] = tokens the caller asks for beyond the cost (to spend on its next requests without a round trip),
-- ARGV[4] = tokens the caller took before and did not spend (they go back first).
-- Returns {0, tokens granted beyond the cost} when admitted, else {the milliseconds until it would be, 0}.
-- The bucket holds one second's worth (at least one token) and starts full. A request costing more than the bucket
-- holds is admitted once the bucket is full, leaving it in debt, so a batch larger than a second's worth still
-- goes through and the average holds.

local rate, cost = tonumber(ARGV[1]), tonumber(ARGV[2])
local extra, unspent = tonumber(ARGV[3] or '0'), tonumber(ARGV[4] or '0')
local burst = math.max(1, rate)
-- Redis's clock, not the API process's: skewed hosts must share one bucket.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local tokens = burst
local saved = redis.call('HMGET', KEYS[1], 'tokens', 'refilled')
if saved[1] then
    tokens = math.min(burst, tonumber(saved[1]) + math.max(0, now - tonumber(saved[2])) * rate / 1000)
end
tokens = math.min(burst, tokens + unspent)
local needed = math.min(cost, burst)
if tokens < needed then
    if unspent > 0 then
        redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'refilled', string.format('%d', now))
        redis.call('PEXPIRE', KEYS[1], math.max(1, math.ceil((burst - tokens) * 1000 / rate)))
    end
    return {math.ceil((needed - tokens) * 1000 / rate), 0}
end
tokens = tokens - cost
local granted = math.max(0, math.min(extra, math.floor(tokens)))
tokens = tokens - granted
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'refilled', string.format('%d', now))
-- A full bucket is the same as none: the key goes once it would be full again.
redis.call('PEXPIRE', KEYS[1], math.max(1, math.ceil((burst - tokens) * 1000 / rate)))
return {0, granted}
