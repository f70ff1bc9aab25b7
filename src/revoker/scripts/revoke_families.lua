-- Revoke one batch of a job chunk's families: mark each revoked, drop it from the indexes.
-- KEYS[1]: the index the job walks (tenant or user); KEYS[1+i]: the revoked marker of
-- family i; KEYS[1+n+i]: the other index holding family i (KEYS[1] again when unknown).
-- ARGV[1]: the mark "<revoked_at_us>|<reason>"; ARGV[2]: marker TTL (s); ARGV[3]: n;
-- ARGV[3+i]: family id i.
-- The caller sorts a batch by its other index, so each run of families sharing one index is
-- removed with a single ZREM; it keeps batches small so Redis is never held for more than about
-- a millisecond, and every key of a batch shares the tenant's hash tag (one Cluster slot).
-- Idempotent: rerunning a batch rewrites the same markers and removes nothing more.
local mark, ttl, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
if n == 0 then
  return 0
end
local run_start = 1
for i = 1, n do
  redis.call("SET", KEYS[1 + i], mark, "EX", ttl)
  local other = KEYS[1 + n + i]
  if i == n or KEYS[2 + n + i] ~= other then
    if other ~= KEYS[1] then
      redis.call("ZREM", other, unpack(ARGV, 3 + run_start, 3 + i))
    end
    run_start = i + 1
  end
end
redis.call("ZREM", KEYS[1], unpack(ARGV, 4, 3 + n))
return n
