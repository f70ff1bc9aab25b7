-- StoreCore.sequenced on a single Redis: a write of revocation state, its sequence bump and its
-- change-feed entry in one script, so a write that fails (a key of the wrong type) stops the
-- script before the bump and the entry: no entry without its write. (In a MULTI/EXEC a failing
-- command does not stop the others.) Sent as EVAL, not EVALSHA: a server that lost its script
-- cache must still run it (the MULTI around it cannot retry a NOSCRIPT).
-- KEYS[1] the integrity hash, KEYS[2] the feed; ARGV[1..7] as _sequence.lua reads them;
-- ARGV[8] how many write commands follow, each as its argument count, then its arguments
-- (every write of one plan names the same key, so a failure comes at the first).
-- Returns the writes' replies, then the sequence after the bump.
local replies, at = {}, 9
for w = 1, tonumber(ARGV[8]) do
  local n = tonumber(ARGV[at])
  replies[w] = redis.call(unpack(ARGV, at + 1, at + n))
  at = at + n + 1
end
replies[#replies + 1] = revoker_sequenced(KEYS[1], KEYS[2], 1)
return replies
