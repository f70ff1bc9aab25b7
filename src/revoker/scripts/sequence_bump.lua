-- StoreCore.sequence_bump: the sequence bump of a write whose step cannot run _sequence.lua's
-- revoker_sequenced (a cluster's plain commands beside a write, a bulk chunk's bump after its
-- marks), by the same rule (keys.read_seq): a missing or corrupt seq reads 0, never an error
-- (HINCRBY refused "abc" or "007" and failed the revocation with it). No feed entry.
-- KEYS[1] the integrity hash; ARGV[1] the epoch to create if absent; ARGV[2] how much to add.
redis.call("HSETNX", KEYS[1], "epoch", ARGV[1])
local seq = revoker_seq(redis.call("HGET", KEYS[1], "seq")) + tonumber(ARGV[2])
redis.call("HSET", KEYS[1], "seq", string.format("%d", seq))
return seq
