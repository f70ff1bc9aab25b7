-- What a bulk job's chunk scripts share (chunk_buckets.lua, chunk_index.lua), prepended to each
-- after _sequence.lua by tasks.buckets: the arguments both take, the selection, and the step's
-- end (progress, the chunk's revoked ids, the sequence bump and the feed entry).
--
-- KEYS[1] the chunk's progress hash (keys.KeyLayout.job_chunk_progress): field <bucket number>
--         -> "d" (done) or the HSCAN cursor to resume at; field "n" -> sessions revoked so far.
-- KEYS[2] the chunk's revoked family ids, space-separated (keys.KeyLayout.job_chunk_revoked):
--         what the chunk's audit entry lists.
-- ARGV[1] the cut-off (µs): records created at or before it are covered.
-- ARGV[2] the user (escaped as in the record; "" for any); ARGV[3] the client (same).
-- ARGV[4], ARGV[5] the issue window's first and last µs, inclusive ("" for none).
-- ARGV[6] the mark to write; ARGV[7] the marks buckets' TTL (s); ARGV[8] the progress keys' TTL.
-- ARGV[9] the fields to examine in this call before it stops: a bucket not begun that would take
-- the call past it is left to the next call, unless it is the call's first.
-- ARGV[10] HSCAN's COUNT; ARGV[11] the largest bucket read whole (HGETALL): a bigger one is read
-- in HSCAN pages, the call stopping past the page that reaches ARGV[9], the next call resuming.
-- ARGV[12] nb, the number of buckets; ARGV[13 .. 12 + nb] their numbers.
-- ARGV[13 + nb ..] the epoch and StoreCore.feed_args of the chunk's feed entry (its ids empty:
-- the step fills in the families it marked), as _sequence.lua reads them.
--
-- A record is "user|client|created|expires|..." (keys.RECORD_FIELDS, at least four parts:
-- keys.record_head); a value with fewer parts is not a record this version wrote and is left
-- alone. Its created time is read by keys.read_time (as rotate_refresh.lua; see there): one or
-- more ASCII digits and nothing else, capped at keys.MAX_TIME; an unreadable one is never
-- covered. tests/test_format_parity.py holds both scripts' selection to tasks.buckets.Selection.
local MAX_TIME = 9007199254740991
local progress, revoked_ids = KEYS[1], KEYS[2]
local cutoff = tonumber(ARGV[1])
local after = ARGV[4] ~= "" and tonumber(ARGV[4]) or nil
local before = ARGV[5] ~= "" and tonumber(ARGV[5]) or nil
local mark, mark_ttl, progress_ttl = ARGV[6], ARGV[7], ARGV[8]
local budget, count, whole = tonumber(ARGV[9]), ARGV[10], tonumber(ARGV[11])
local nb = tonumber(ARGV[12])

-- One pattern for the whole selection but the times: the record's first three parts, the user
-- and the client as given (every character but letters and digits matched literally), and the
-- created time captured only when it is one or more ASCII digits (%d is 0-9 in every locale):
-- a value with fewer parts, another user or client, or an unreadable time does not match.
local function literal(part)
  if part == "" then return "[^|]*" end
  return (string.gsub(part, "%W", "%%%0"))
end
local covered = "^" .. literal(ARGV[2]) .. "|" .. literal(ARGV[3]) .. "|(%d+)|"
-- Whether a created time (µs, read by the pattern) is in the job's range.
local function in_range(at)
  if at > MAX_TIME then at = MAX_TIME end
  return at <= cutoff and (not after or at >= after) and (not before or at <= before)
end

-- keys.escape_feed_id of a family id as stored (UTF-8 text: quote() escapes each byte of a
-- non-ASCII character, so byte by byte is the same): every byte but A-Z a-z 0-9 and
-- -._~@+=!$&'()*; as %XX (upper-case hex), the comma too (the ids' separator).
local function escape_feed_id(id)
  return (string.gsub(id, "[^A-Za-z0-9%-%._~@%+=!%$&'%(%)%*;]", function(c)
    return string.format("%%%02X", string.byte(c))
  end))
end

-- Up to 1,000 values per command (Lua's unpack is bounded).
local function call_in_parts(command, key, values)
  for i = 1, #values, 1000 do
    redis.call(command, key, unpack(values, i, math.min(#values, i + 999)))
  end
end

-- The buckets' saved states (ARGV[13 ..]'s numbers, then "n"): what the step resumes from.
local numbers = {unpack(ARGV, 13, 12 + nb)}
numbers[nb + 1] = "n"
local states = redis.call("HMGET", progress, unpack(numbers))
numbers[nb + 1] = nil

-- The step's end: the buckets reached (number, cursor pairs) and the count into the progress
-- hash, the revoked ids (pages of them) onto the chunk's list, then the sequence bump and the
-- feed entry naming them, where the integrity hash and the feed are given.
local function record_step(reached, revoked, pages, integrity, feed)
  reached[#reached + 1] = "n"
  reached[#reached + 1] = string.format("%d", tonumber(states[nb + 1] or "0") + revoked)
  call_in_parts("HSET", progress, reached)
  if not states[nb + 1] then redis.call("EXPIRE", progress, progress_ttl) end
  if revoked == 0 then return end
  local all = {}
  for p = 1, #pages do
    for i = 1, #pages[p] do all[#all + 1] = pages[p][i] end
  end
  local appended = table.concat(all, " ") .. " "
  if redis.call("APPEND", revoked_ids, appended) == #appended then
    redis.call("EXPIRE", revoked_ids, progress_ttl)
  end
  if integrity then
    -- Escaped one by one only where some id needs it: ids of ASCII letters, digits, ".", "_"
    -- and "-" alone (every id start_session mints) are their own escape. One anchored pass
    -- over the ids run together (byte ranges, no locale): three unanchored scans and a gsub
    -- of the spaced list cost ~20% of this script's Redis time (bench/fanout.py, filtered).
    local joined
    if string.find(table.concat(all), "^[A-Za-z0-9%._%-]*$") then
      joined = table.concat(all, ",")
    else
      local escaped = {}
      for i = 1, #all do escaped[i] = escape_feed_id(all[i]) end
      joined = table.concat(escaped, ",")
    end
    revoker_sequenced(integrity, feed, 13 + nb, joined)
  end
end
