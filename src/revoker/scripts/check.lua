-- The per-request check's reads in one call. It only reads (run by EVALSHA, loaded per connection).
-- KEYS: the check's keys present on this node, in RULE_ORDER (keys.KeyLayout.check_keys).
-- ARGV[1]: the index in KEYS of the family's revoked-mark bucket (0: not among them);
-- ARGV[2]: the family id, its field there.
-- Returns one value per key: the family's mark for the bucket, the string's value otherwise.
-- It reads no value: rules.decide reads them (keys.decode_mark), so the check has one rule.
local family_at = tonumber(ARGV[1])
local out = {}
for i, key in ipairs(KEYS) do
  if i == family_at then
    out[i] = redis.call("HGET", key, ARGV[2])
  else
    out[i] = redis.call("GET", key)
  end
end
return out
