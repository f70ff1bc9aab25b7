-- Read some fields of many family (session) hashes in one call: the fan-out's filter input.
-- KEYS[i]: family hash i. ARGV: the field names to read.
-- Returns the values flattened, #ARGV per family, false (nil) where absent. Read only; the
-- caller keeps batches small (a few hundred hashes, well under a millisecond).
local out = {}
local n = 0
for i = 1, #KEYS do
  local values = redis.call("HMGET", KEYS[i], unpack(ARGV))
  for j = 1, #ARGV do
    n = n + 1
    out[n] = values[j]
  end
end
return out
