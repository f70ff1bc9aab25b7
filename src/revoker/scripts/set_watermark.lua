-- Move a user or tenant watermark forward, never back.
-- KEYS[1]: the watermark key.
-- ARGV[1]: the new mark "<revoked_at_us>|<reason>"; ARGV[2]: TTL in seconds.
-- Two revocations racing must leave the later cut-off in place, and the TTL must cover the
-- newest mark, so compare and write in one atomic step.
-- Returns the mark in force afterwards.
local new = ARGV[1]
local new_at = tonumber(string.match(new, "^(%d+)"))
local old = redis.call("GET", KEYS[1])
if old then
  local old_at = tonumber(string.match(old, "^(%d+)")) or 0
  if old_at >= new_at then
    redis.call("EXPIRE", KEYS[1], ARGV[2], "GT")
    return old
  end
end
redis.call("SET", KEYS[1], new, "EX", ARGV[2])
return new
