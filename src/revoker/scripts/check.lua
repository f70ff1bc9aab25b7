-- The per-request check's reads in one call. It only reads (run by EVALSHA, loaded per connection).
-- KEYS: the check's keys present on this node, in RULE_ORDER (keys.KeyLayout.check_keys), and
-- the integrity hash (keys.KeyLayout.integrity) where it lives on this node.
-- ARGV[1]: the index in KEYS of the family's revoked-mark bucket (0: not among them);
-- ARGV[2]: the family id, its field there;
-- ARGV[3]: the index in KEYS of the integrity hash (0: not among them).
-- Returns one value per key: the family's mark for the bucket, the integrity hash's epoch, seq,
-- state, lost and from (revoker.integrity.INTEGRITY_FIELDS) for it, the string's value otherwise.
-- It reads no value: rules.decide and revoker.integrity read them, so the check has one rule.
local family_at = tonumber(ARGV[1])
local integrity_at = tonumber(ARGV[3] or "0")
local out = {}
for i, key in ipairs(KEYS) do
  if i == family_at then
    out[i] = redis.call("HGET", key, ARGV[2])
  elseif i == integrity_at then
    out[i] = redis.call("HMGET", key, "epoch", "seq", "state", "lost", "from")
  else
    out[i] = redis.call("GET", key)
  end
end
return out
