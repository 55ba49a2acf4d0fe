-- keygate: make sure this replica's share of each key's month spend is at least what its
-- ledger holds. Each replica keeps its own share (one hash field per replica), so a replica
-- that seeds twice, or seeds after its settlements already arrived, never counts anything
-- twice: a share only ever rises to the ledger's figure.
--
-- KEYS: the month spend hashes; ARGV: 1 this replica, 2 when the month's spend may be
-- forgotten (unix seconds), then one amount per key.
for i, key in ipairs(KEYS) do
  local amount = tonumber(ARGV[i + 2])
  local current = tonumber(redis.call('HGET', key, ARGV[1]) or '0')
  if amount > current then
    redis.call('HSET', key, ARGV[1], string.format('%.0f', amount))
  end
  redis.call('EXPIREAT', key, ARGV[2])
end
return #KEYS
