-- Handle a detected loss of the denylist once, or record an operator's recovery.
-- KEYS[1]: the integrity hash (keys.KeyLayout.integrity); KEYS[2]: the global watermark.
-- ARGV[1]: "loss" or "recover".
-- ARGV[2]: (loss) the epoch the detecting check read, "" for none. The loss is handled only if
--          the epoch is still that one: several processes detecting the same loss at once write
--          one cut-off and one new epoch, the others find it done and change nothing.
-- ARGV[3]: the new state (cutoff, fail-closed, accepted, recovered); ARGV[4]: the new epoch.
-- ARGV[5]: the global cut-off "<at_us>|<reason>" to write, "" for none; ARGV[6]: its TTL (s).
-- ARGV[7]: (loss) the epoch the detecting process had seen, "" for none; ARGV[8]: now (µs).
-- KEYS[3], if given: the change feed, which gets an "epoch" entry (every reader must load a
-- snapshot again) with the new sequence; ARGV[9..]: the new epoch again and StoreCore.feed_args
-- (see _sequence.lua).
-- Returns the integrity fields (revoker.integrity.INTEGRITY_FIELDS) afterwards, then the global
-- watermark.
local id, gw = KEYS[1], KEYS[2]
local current = redis.call("HGET", id, "epoch") or ""
if ARGV[1] == "recover" or current == ARGV[2] then
  if ARGV[5] ~= "" then
    -- As set_watermark.lua: the later cut-off stays (times by keys.read_time).
    local function at(value)
      local part = string.match(value, "^([^|]*)")
      if not string.find(part, "^%d+$") then return 0 end
      return tonumber(part)
    end
    local old = redis.call("GET", gw)
    if old and at(old) >= at(ARGV[5]) then
      redis.call("EXPIRE", gw, ARGV[6], "GT")
    else
      redis.call("SET", gw, ARGV[5], "EX", ARGV[6])
    end
  end
  if ARGV[1] == "loss" then
    redis.call("HSET", id, "lost", ARGV[7], "lost_at", ARGV[8])
  else
    redis.call("HSET", id, "recovered_at", ARGV[8])
  end
  redis.call("HSET", id, "from", current, "epoch", ARGV[4], "state", ARGV[3])
  revoker_sequenced(id, KEYS[3], 9)
end
local out = redis.call("HMGET", id, "epoch", "seq", "state", "lost", "from")
out[6] = redis.call("GET", gw)
return out
