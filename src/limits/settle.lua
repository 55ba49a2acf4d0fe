-- keygate: settle one request: free its concurrency slot and reservation, give back (or
-- charge) the tokens it did not (or did) use, and add its cost to this replica's share of
-- the month's spend.
--
-- KEYS: 1 tokens bucket, 2 concurrency slots, 3 reservations, 4 reserved amounts,
--       5 month spend (hash replica -> micro-dollars)
-- ARGV: 1 request id ('' when it holds nothing here), 2 tokens per minute (0: none),
--       3 tokens to give back (negative: to charge), 4 cost, 5 this replica, 6 when the
--       month's spend may be forgotten (unix seconds)
-- Returns the month's spend over all replicas.

local UNIT = 60000
local id = ARGV[1]
if id ~= '' then
  redis.call('ZREM', KEYS[2], id)
  if redis.call('ZREM', KEYS[3], id) == 1 then
    local amount = tonumber(redis.call('HGET', KEYS[4], id) or '0')
    redis.call('HDEL', KEYS[4], id)
    redis.call('HINCRBY', KEYS[4], '_total', -amount)
  end
end
local tpm, refund = tonumber(ARGV[2]), tonumber(ARGV[3])
if tpm > 0 and refund ~= 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local s = redis.call('HMGET', KEYS[1], 'l', 't')
  local full = tpm * UNIT
  local l = tonumber(s[1]) or full
  local at = tonumber(s[2]) or now
  l = math.min(full, l + math.min(math.max(now - at, 0), 2 * UNIT) * tpm)
  -- Never more than one window of debt, whatever a request reported.
  l = math.max(-full, math.min(full, l + refund * UNIT))
  redis.call('HSET', KEYS[1], 'l', string.format('%.0f', l), 't', string.format('%.0f', now))
  redis.call('PEXPIRE', KEYS[1], 3 * UNIT)
end
local cost = tonumber(ARGV[4])
if cost > 0 then
  redis.call('HINCRBY', KEYS[5], ARGV[5], ARGV[4])
  redis.call('EXPIREAT', KEYS[5], ARGV[6])
end
local spent = 0
for _, v in ipairs(redis.call('HVALS', KEYS[5])) do spent = spent + tonumber(v) end
return string.format('%.0f', spent)
