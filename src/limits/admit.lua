-- keygate: check every per-key limit and, only if all pass, reserve against all of them,
-- atomically: one round trip per admitted request, and the same exactness as one process.
-- Time is Redis's own, so replicas agree.
--
-- KEYS: 1 requests bucket, 2 tokens bucket, 3 concurrency slots (zset id -> lease end),
--       4 reservations (zset id -> lease end), 5 reserved amounts (hash id -> micro-dollars,
--       '_total' -> their sum), 6 month spend (hash replica -> micro-dollars)
-- ARGV: 1 requests per minute (0: none), 2 tokens per minute (0: none), 3 max concurrent
--       (0: none), 4 budget in micro-dollars (-1: none), 5 tokens to reserve, 6 cost to
--       reserve, 7 request id, 8 lease in ms
-- Returns {1, requests left, requests reset ms, tokens left, tokens reset ms, spent, reserved}
-- or {0, reason, wait ms, left, spent, reserved} with reason requests | tokens |
-- tokens_never_fit | concurrency | budget.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
local conc, budget = tonumber(ARGV[3]), tonumber(ARGV[4])
local tokens, cost = tonumber(ARGV[5]), tonumber(ARGV[6])
local id, lease = ARGV[7], tonumber(ARGV[8])
local UNIT = 60000 -- bucket units per token: a bucket of C refills C units per ms

local function int(x) return string.format('%.0f', x) end

-- Slots and reservations whose replica stopped renewing them (it crashed) expire here.
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
local expired = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now)
if #expired > 0 then
  local freed = 0
  for _, rid in ipairs(expired) do
    freed = freed + tonumber(redis.call('HGET', KEYS[5], rid) or '0')
    redis.call('HDEL', KEYS[5], rid)
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
  redis.call('HINCRBY', KEYS[5], '_total', -freed)
end

-- A bucket's level now, in units, refilled since its last update (at most one window).
local function level(key, cap)
  local s = redis.call('HMGET', key, 'l', 't')
  local full = cap * UNIT
  local l = tonumber(s[1]) or full
  local at = tonumber(s[2]) or now
  local elapsed = math.min(math.max(now - at, 0), 2 * UNIT)
  return math.min(full, l + elapsed * cap)
end
local function wait(l, need, cap) return math.ceil((need - l) / cap) end
local function left(l) return math.floor(math.max(l, 0) / UNIT) end

local spent = 0
for _, v in ipairs(redis.call('HVALS', KEYS[6])) do spent = spent + tonumber(v) end
local reserved = tonumber(redis.call('HGET', KEYS[5], '_total') or '0')

if conc > 0 and redis.call('ZCARD', KEYS[3]) >= conc then
  return {0, 'concurrency', 1000, 0, int(spent), int(reserved)}
end
local rl = 0
if rpm > 0 then
  rl = level(KEYS[1], rpm)
  if rl < UNIT then return {0, 'requests', wait(rl, UNIT, rpm), left(rl), int(spent), int(reserved)} end
end
local tl = 0
if tpm > 0 then
  tl = level(KEYS[2], tpm)
  if tokens > tpm then return {0, 'tokens_never_fit', 0, left(tl), int(spent), int(reserved)} end
  if tl < tokens * UNIT then
    return {0, 'tokens', wait(tl, tokens * UNIT, tpm), left(tl), int(spent), int(reserved)}
  end
end
if budget >= 0 and spent + reserved + cost > budget then
  return {0, 'budget', 0, 0, int(spent), int(reserved)}
end

local rreset, treset = 0, 0
if rpm > 0 then
  rl = rl - UNIT
  redis.call('HSET', KEYS[1], 'l', int(rl), 't', int(now))
  redis.call('PEXPIRE', KEYS[1], 3 * UNIT)
  rreset = wait(rl, rpm * UNIT, rpm)
end
if tpm > 0 then
  tl = tl - tokens * UNIT
  redis.call('HSET', KEYS[2], 'l', int(tl), 't', int(now))
  redis.call('PEXPIRE', KEYS[2], 3 * UNIT)
  treset = wait(tl, tpm * UNIT, tpm)
end
if conc > 0 then redis.call('ZADD', KEYS[3], now + lease, id) end
if cost > 0 then
  redis.call('ZADD', KEYS[4], now + lease, id)
  redis.call('HSET', KEYS[5], id, int(cost))
  redis.call('HINCRBY', KEYS[5], '_total', int(cost))
  reserved = reserved + cost
end
return {1, left(rl), rreset, left(tl), treset, int(spent), int(reserved)}
