-- Move a user or tenant watermark forward, never back.
-- KEYS[1]: the watermark key; KEYS[2], KEYS[3], if given: the integrity hash
-- (keys.KeyLayout.integrity), whose seq a write bumps in this same step (and whose epoch it
-- creates, ARGV[3], if absent), and the change feed, which gets the write's entry (ARGV[4..],
-- see _sequence.lua). A watermark left in place writes neither.
-- ARGV[1]: the new mark "<revoked_at_us>|<reason>"; ARGV[2]: TTL in seconds.
-- Two revocations racing must leave the later cut-off in place, and the TTL must cover the
-- newest mark, so compare and write in one atomic step.
-- Returns the mark in force afterwards.
-- A mark's time by keys.read_time (as rotate_refresh.lua; see there); unreadable reads 0, as
-- keys.decode_mark reads it, so an unreadable old watermark is always replaced.
local MAX_TIME = 9007199254740991
local function mark_time(value)
  local part = string.match(value, "^([^|]*)")
  if not string.find(part, "^%d+$") then return 0 end
  return math.min(tonumber(part), MAX_TIME)
end
local new = ARGV[1]
local new_at = mark_time(new)
local old = redis.call("GET", KEYS[1])
if old then
  local old_at = mark_time(old)
  if old_at >= new_at then
    redis.call("EXPIRE", KEYS[1], ARGV[2], "GT")
    return old
  end
end
redis.call("SET", KEYS[1], new, "EX", ARGV[2])
if KEYS[2] then revoker_sequenced(KEYS[2], KEYS[3], 3) end
return new
