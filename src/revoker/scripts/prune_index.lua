-- Remove up to ARGV[2] expired members (score < ARGV[1]) from the index KEYS[1].
-- Members are scored by expiry, so the expired ones are the lowest ranks: removing by rank is
-- O(log n + removed) and the limit bounds how long Redis is held. Returns the number removed.
local expired = redis.call("ZCOUNT", KEYS[1], "-inf", "(" .. ARGV[1])
local count = math.min(expired, tonumber(ARGV[2]))
if count == 0 then
  return 0
end
return redis.call("ZREMRANGEBYRANK", KEYS[1], 0, count - 1)
