-- Fleet-wide flow control of destinations: every decision and state change of one destination happens here,
-- in one script run, so concurrent workers on any host never interleave a read and a write.
--
-- KEYS[1] = the known zset (destination -> ms until which it has keys), then per destination its hash and its
-- leases zset (lease id -> expiry ms). ARGV[1] = operation, ARGV[2] = now in ms or '' for Redis's own clock.
--   admit   ARGV: dest, lease_id, lease_ms, concurrency|'' , rate|''           -> {granted, reason, until_ms, probe}
--   release ARGV: dest, lease_id, outcome, retry_after_ms, threshold, cooldown_ms, max_cooldown_ms, forget_ms -> 1
--   reset   ARGV: dest                                                         -> 1
--   inspect KEYS[2..]: hash, leases pairs -> per pair {in_flight, circuit, failures, opened_until, paused_until}
--   known   -> destinations that have state
--   batch   a worker's admits and releases of many destinations at once, parking on waiting lists (below)
--   wake    the waiting lists of some destinations, as far as they have room (the reconciler's pass)
-- Waiting lists: a message deferred for 'limit' leaves its worker's Dramatiq acks set for the destination's list
-- (its body stays in the queue's hash, where the reconciler finds it); a release wakes it back onto the queue.
-- A paused destination's first deferred message of each pause goes back to its worker to come back when the pause
-- ends (the waker: its attempt's release wakes the others); every other one waits on the list, not going round
-- the delay queue once per pause.
-- Every time-bound field reads as its default once its time has passed, so the logic never depends on when
-- Redis actually expires a key (tests inject `now`); PEXPIRE only collects the garbage.

local unpack = unpack or table.unpack
local FIELDS = {'circuit', 'failures', 'reopenings', 'opened_until', 'probe', 'forget_at',
                'paused_until', 'tokens', 'refilled', 'bucket_until', 'waker_until'}
-- Beyond this many doublings the cooldown is capped anyway; keeps 2^n finite.
local MAX_REOPENINGS = 64

local op = ARGV[1]
-- How soon a job deferred while the half-open circuit's probe is out looks again.
local PROBE_RECHECK_MS = 1000

local now
if ARGV[2] ~= '' then
    now = tonumber(ARGV[2])
else
    -- Redis's clock, not the worker's: skewed worker clocks must not open, close or pause anything.
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local known = KEYS[1]

-- Redis and fakeredis format Lua numbers differently; integers as '%d' read the same everywhere.
local function int(x)
    return string.format('%d', x)
end

local function load(hash)
    local v = redis.call('HMGET', hash, unpack(FIELDS))
    local s = {circuit = 'closed', failures = 0, reopenings = 0, opened_until = 0, probe = false, forget_at = 0,
               paused_until = 0, tokens = false, refilled = 0, bucket_until = 0, waker_until = 0}
    if v[1] and tonumber(v[6]) > now then
        s.circuit, s.failures, s.reopenings = v[1], tonumber(v[2]), tonumber(v[3])
        s.opened_until, s.probe, s.forget_at = tonumber(v[4]), v[5], tonumber(v[6])
    end
    if v[7] and tonumber(v[7]) > now then
        s.paused_until = tonumber(v[7])
        if v[11] then s.waker_until = tonumber(v[11]) end
    end
    if v[8] and tonumber(v[10]) > now then
        s.tokens, s.refilled, s.bucket_until = tonumber(v[8]), tonumber(v[9]), tonumber(v[10])
    end
    return s
end

local function breaker_is_default(s)
    return s.circuit == 'closed' and s.failures == 0
end

-- The time until which the hash holds anything that is not a default; 0 when nothing.
local function hash_horizon(s)
    local horizon = 0
    if not breaker_is_default(s) then horizon = s.forget_at end
    if s.paused_until > now then horizon = math.max(horizon, s.paused_until) end
    if s.tokens then horizon = math.max(horizon, s.bucket_until) end
    return horizon
end

-- Rewrites the hash whole: a destination back to defaults leaves no key, anything else expires at its horizon.
local function save(hash, s)
    redis.call('DEL', hash)
    local horizon = hash_horizon(s)
    if horizon <= now then return end
    local fields = {}
    if not breaker_is_default(s) then
        for _, f in ipairs({'circuit', 'failures', 'reopenings', 'opened_until', 'forget_at'}) do
            fields[#fields + 1] = f
            fields[#fields + 1] = f == 'circuit' and s.circuit or int(s[f])
        end
        if s.probe then
            fields[#fields + 1] = 'probe'
            fields[#fields + 1] = s.probe
        end
    end
    if s.paused_until > now then
        fields[#fields + 1] = 'paused_until'
        fields[#fields + 1] = int(s.paused_until)
        if s.waker_until > 0 then
            fields[#fields + 1] = 'waker_until'
            fields[#fields + 1] = int(s.waker_until)
        end
    end
    if s.tokens then
        fields[#fields + 1] = 'tokens'
        fields[#fields + 1] = tostring(s.tokens)
        fields[#fields + 1] = 'refilled'
        fields[#fields + 1] = int(s.refilled)
        fields[#fields + 1] = 'bucket_until'
        fields[#fields + 1] = int(s.bucket_until)
    end
    redis.call('HSET', hash, unpack(fields))
    redis.call('PEXPIRE', hash, int(horizon - now))
end

local function leases_horizon(leases)
    local last = redis.call('ZRANGE', leases, -1, -1, 'WITHSCORES')
    if last[2] then return tonumber(last[2]) end
    return 0
end

-- Keeps the known zset equal to "destinations that have keys", and drops those whose keys have lapsed
-- (every admission is followed by a release, so doing it here keeps the zset bounded).
local function track(dest, s, leases)
    local horizon = math.max(hash_horizon(s), leases_horizon(leases))
    if horizon > now then
        redis.call('ZADD', known, int(horizon), dest)
    else
        redis.call('ZREM', known, dest)
    end
    redis.call('ZREMRANGEBYSCORE', known, '-inf', int(now))
end

local function close(s)
    s.circuit, s.failures, s.reopenings, s.opened_until, s.probe = 'closed', 0, 0, 0, false
end

local function deferred(reason, until_ms)
    return {0, reason, int(until_ms), 0}
end

local function live_lease(leases, lease_id)
    local expiry = redis.call('ZSCORE', leases, lease_id)
    if expiry and tonumber(expiry) > now then return tonumber(expiry) end
    return false
end

local function grant(dest, hash, leases, s, lease_id, lease_ms, dirty)
    redis.call('ZADD', leases, int(now + lease_ms), lease_id)
    local horizon = leases_horizon(leases)
    redis.call('PEXPIRE', leases, int(horizon - now))
    if dirty then save(hash, s) end
    -- An admission only adds state, so raising the destination's score is enough (one call, not track's three).
    redis.call('ZADD', known, 'GT', int(math.max(horizon, hash_horizon(s))), dest)
    return {1, '', 0, (s.probe == lease_id) and 1 or 0}
end

local function admit(hash, leases, dest, lease_id, lease_ms, concurrency, rate)
    -- A worker killed with kill -9 never releases: its slot frees when its lease expires.
    redis.call('ZREMRANGEBYSCORE', leases, '-inf', int(now))
    local s = load(hash)
    -- The same lease admitted again (a retried call whose reply was lost) renews it instead of taking a slot.
    if live_lease(leases, lease_id) then
        return grant(dest, hash, leases, s, lease_id, lease_ms, false)
    end
    -- Decide everything first and write only on a grant: a deferred caller must not leave a probe behind.
    local probe = false
    if s.circuit == 'open' then
        if now < s.opened_until then return deferred('circuit', s.opened_until) end
        probe = true
    elseif s.circuit == 'half_open' then
        local probe_expiry = s.probe and live_lease(leases, s.probe)
        -- Not the probe's whole lease (a visibility timeout): its answer usually comes far sooner, and no release
        -- wakes a job deferred this way.
        if probe_expiry then return deferred('circuit', math.min(probe_expiry, now + PROBE_RECHECK_MS)) end
        probe = true
    end
    if s.paused_until > now then
        local r = deferred('throttled', s.paused_until)
        if s.waker_until >= s.paused_until then
            r.park = true
        else
            s.waker_until = s.paused_until
            save(hash, s)
        end
        return r
    end
    if concurrency and redis.call('ZCARD', leases) >= concurrency then
        -- The latest time a slot is sure to free; a release usually frees one much sooner.
        local first = redis.call('ZRANGE', leases, 0, 0, 'WITHSCORES')
        return deferred('limit', tonumber(first[2]))
    end
    local dirty = false
    if rate then
        -- A token bucket holding one second's worth (at least one token), refilled continuously.
        local burst = math.max(1, rate)
        local tokens = burst
        if s.tokens then tokens = math.min(burst, s.tokens + (now - s.refilled) * rate / 1000) end
        if tokens < 1 then return deferred('rate', now + math.ceil((1 - tokens) * 1000 / rate)) end
        s.tokens, s.refilled = tokens - 1, now
        s.bucket_until = now + math.ceil((burst - s.tokens) * 1000 / rate)
        dirty = true
    end
    if probe then
        s.circuit, s.probe, dirty = 'half_open', lease_id, true
    end
    return grant(dest, hash, leases, s, lease_id, lease_ms, dirty)
end

-- breaker = {threshold, cooldown_ms, max_cooldown_ms, forget_ms}
local function release(hash, leases, dest, lease_id, outcome, retry_after_ms, breaker)
    local threshold, cooldown_ms, max_cooldown_ms, forget_ms = unpack(breaker)
    -- Expired leases are left to the next admission: they never raise the horizon `track` computes.
    redis.call('ZREM', leases, lease_id)
    local s = load(hash)
    local was_default = breaker_is_default(s) and s.paused_until <= now
    -- Only the probe's own answer decides a half-open circuit; a late answer of an attempt sent before the
    -- circuit opened is a straggler and counts like any other outcome.
    local was_probe = s.probe == lease_id
    if was_probe then s.probe = false end
    if outcome == 'success' then
        -- The latest news is that the destination serves: whatever the circuit, it closes.
        close(s)
    elseif outcome == 'transient' then
        s.failures = s.failures + 1
        if was_probe then
            s.reopenings = math.min(s.reopenings + 1, MAX_REOPENINGS)
            s.circuit = 'open'
            s.opened_until = now + math.min(max_cooldown_ms, cooldown_ms * 2 ^ s.reopenings)
        elseif s.circuit == 'closed' and s.failures >= threshold then
            s.circuit, s.opened_until, s.reopenings = 'open', now + cooldown_ms, 0
        end
    elseif outcome == 'throttled' then
        -- Throttling is the receiver answering: it never counts as a failure, and a throttled probe closes.
        if retry_after_ms > 0 then s.paused_until = math.max(s.paused_until, now + retry_after_ms) end
        if was_probe then close(s) end
    elseif outcome == 'permanent' then
        if was_probe then close(s) end
    end
    -- 'none': nothing was sent, so only the lease (and a probe's turn) goes back.
    if not breaker_is_default(s) then
        -- A breaker with no news for forget_ms forgets, so abandoned destinations do not stay listed forever.
        s.forget_at = math.max(s.opened_until, now) + forget_ms
    end
    if not (was_default and breaker_is_default(s) and s.paused_until <= now) then save(hash, s) end
    track(dest, s, leases)
end

-- The Dramatiq queue woken messages go back to: KEYS[3..5] of `batch` and `wake` (its list, bodies hash, bell).
local queue_list, queue_bodies, queue_bell = KEYS[3], KEYS[4], KEYS[5]
local waiting_set = KEYS[2]

-- A message deferred for 'limit' leaves this worker's leases of the queue (so its ack, which the worker skips,
-- cannot be needed and Dramatiq's maintenance never requeues it) for the destination's waiting list.
local function park(waiting, acks, dest, rid)
    if redis.call('SREM', acks, rid) == 0 then return 0 end
    redis.call('RPUSH', waiting, rid)
    redis.call('SADD', waiting_set, dest)
    return 1
end

-- Up to `count` waiting messages back onto the queue (a message whose body went meanwhile is dropped); the bell
-- wakes an idle consumer.
local function wake(waiting, dest, count, bell_tokens)
    local woken = 0
    while woken < count do
        local rid = redis.call('LPOP', waiting)
        if not rid then break end
        if redis.call('HEXISTS', queue_bodies, rid) == 1 then
            redis.call('RPUSH', queue_list, rid)
            woken = woken + 1
        end
    end
    if redis.call('EXISTS', waiting) == 0 then redis.call('SREM', waiting_set, dest) end
    if woken > 0 then
        redis.call('RPUSH', queue_bell, 1)
        redis.call('LTRIM', queue_bell, -bell_tokens, -1)
    end
    return woken
end

local function live_leases(leases)
    redis.call('ZREMRANGEBYSCORE', leases, '-inf', int(now))
    return redis.call('ZCARD', leases)
end

if op == 'admit' then
    return admit(KEYS[2], KEYS[3], ARGV[3], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]))

elseif op == 'release' then
    local breaker = {tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])}
    release(KEYS[2], KEYS[3], ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6]), breaker)
    return 1

elseif op == 'batch' then
    -- KEYS: known, waiting set, queue list, bodies, bell, this worker's acks set of the queue, then per destination
    -- its hash, leases and waiting list. ARGV[3..9]: threshold, cooldown_ms, max_cooldown_ms, forget_ms, lease_ms,
    -- bell tokens, destinations; per destination: key, concurrency|'', rate|''; releases; per release: destination
    -- index, lease id, outcome, retry_after_ms; admits; per admit: destination index, lease id, rid to park|'',
    -- '1' when the worker's own share is full (park without asking).
    local acks = KEYS[6]
    local breaker = {tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])}
    local lease_ms, bell_tokens = tonumber(ARGV[7]), tonumber(ARGV[8])
    local dests, i = {}, 10
    for d = 1, tonumber(ARGV[9]) do
        local k = 6 + 3 * (d - 1)
        dests[d] = {hash = KEYS[k + 1], leases = KEYS[k + 2], waiting = KEYS[k + 3], key = ARGV[i],
                    concurrency = tonumber(ARGV[i + 1]), rate = tonumber(ARGV[i + 2]), released = 0}
        i = i + 3
    end
    -- Releases first: the slots they free are there for this batch's admits.
    local releases = tonumber(ARGV[i])
    i = i + 1
    for _ = 1, releases do
        local d = dests[tonumber(ARGV[i])]
        release(d.hash, d.leases, d.key, ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3]), breaker)
        d.released = d.released + 1
        i = i + 4
    end
    local out = {}
    local admits = tonumber(ARGV[i])
    i = i + 1
    for n = 1, admits do
        local d, lease_id, rid, share_full = dests[tonumber(ARGV[i])], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3] == '1'
        local r
        if share_full then
            r = deferred('limit', 0)
        else
            r = admit(d.hash, d.leases, d.key, lease_id, lease_ms, d.concurrency, d.rate)
        end
        r[5] = 0
        if r[1] == 0 and (r[2] == 'limit' or r.park) and rid ~= '' then r[5] = park(d.waiting, acks, d.key, rid) end
        out[n] = r
        i = i + 4
    end
    -- Each release wakes one waiting message and one more (a woken message another worker's full share parks
    -- again must not be the last), as far as the fleet-wide limit has room after this batch's admits.
    for _, d in ipairs(dests) do
        if d.released > 0 then
            local count = d.released + 1
            if d.concurrency then count = math.min(count, d.concurrency - live_leases(d.leases)) end
            if count > 0 then wake(d.waiting, d.key, count, bell_tokens) end
        end
    end
    return out

elseif op == 'wake' then
    -- KEYS: known, waiting set, queue list, bodies, bell, then per destination its leases and waiting list.
    -- ARGV[3..4]: bell tokens, most to wake of a destination without a limit; per destination: key, concurrency|''.
    -- Leases that expired (killed workers) free room no release will announce.
    local bell_tokens, cap = tonumber(ARGV[3]), tonumber(ARGV[4])
    local out = {}
    for d = 1, (#KEYS - 5) / 2 do
        local leases, waiting = KEYS[4 + 2 * d], KEYS[5 + 2 * d]
        local key, concurrency = ARGV[3 + 2 * d], tonumber(ARGV[4 + 2 * d])
        local count = cap
        if concurrency then count = concurrency - live_leases(leases) end
        out[d] = count > 0 and wake(waiting, key, count, bell_tokens) or 0
    end
    return out

elseif op == 'waiting' then
    return redis.call('SMEMBERS', waiting_set)

elseif op == 'reset' then
    local hash, leases = KEYS[2], KEYS[3]
    local s = load(hash)
    close(s)
    s.paused_until = 0
    save(hash, s)
    track(ARGV[3], s, leases)
    return 1

elseif op == 'inspect' then
    local out = {}
    for i = 2, #KEYS, 2 do
        local s = load(KEYS[i])
        out[#out + 1] = {
            redis.call('ZCOUNT', KEYS[i + 1], '(' .. int(now), '+inf'),
            s.circuit,
            s.failures,
            -- An open circuit past its cooldown reads 'open' until the next admit makes it half-open.
            int(s.circuit == 'open' and s.opened_until or 0),
            int(s.paused_until),
        }
    end
    return out

elseif op == 'known' then
    redis.call('ZREMRANGEBYSCORE', known, '-inf', int(now))
    return redis.call('ZRANGE', known, 0, -1)
end
return redis.error_reply('unknown flow operation ' .. tostring(op))
