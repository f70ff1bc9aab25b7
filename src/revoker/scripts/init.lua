-- `revoker init`: create the denylist's identity if there is none (keys: "identity of the data").
-- KEYS[1] the integrity hash; KEYS[2], if given, the change feed: a created epoch appends an
-- "epoch" entry (a reader loads a snapshot again), without a sequence (init bumps none).
-- ARGV[1] the new epoch, ARGV[2] now (µs), ARGV[3..] StoreCore.feed_args (see _sequence.lua).
-- Returns {created (1/0), the epoch}.
local created = redis.call("HSETNX", KEYS[1], "epoch", ARGV[1])
redis.call("HSETNX", KEYS[1], "seq", 0)
redis.call("HSETNX", KEYS[1], "initialized_at", ARGV[2])
if created == 1 and KEYS[2] then revoker_feed(KEYS[2], 3, "") end
return {created, redis.call("HGET", KEYS[1], "epoch")}
