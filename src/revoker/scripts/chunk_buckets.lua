-- A bulk job's chunk, revoked server-side a few buckets at a time (tasks.buckets.revoke_server_side):
-- for each session bucket, the records the job covers get their revoked mark (HSET into the
-- bucket's marks, EXPIRE NX and GT as StoreCore.bucket_ttl_commands), are removed (HDEL), and
-- the bucket's progress is recorded, all in this one atomic step. A redelivered chunk skips the
-- buckets it finished and resumes a big one at its saved cursor; a record is counted in the step
-- that deletes it, so the chunk's count is exact however often it is cut and rerun.
-- Every write of revocation state bumps the sequence and appends a feed entry naming the
-- families marked in the same step (_sequence.lua), where the integrity hash and the feed are
-- given (a single Redis; on a Redis Cluster the caller sends the bump after this call).
--
-- KEYS[1] the chunk's progress hash (keys.KeyLayout.job_chunk_progress): field <bucket number>
--         -> "d" (done) or the HSCAN cursor to resume at; field "n" -> sessions revoked so far.
-- KEYS[2] the chunk's revoked family ids, space-separated (keys.KeyLayout.job_chunk_revoked):
--         what the chunk's audit entry lists.
-- KEYS[3 .. 2 + 2 * nb] per bucket, its session bucket then its revoked-mark bucket.
-- KEYS[3 + 2 * nb], KEYS[4 + 2 * nb], if given: the integrity hash and the feed.
-- ARGV[1] the cut-off (µs): records created at or before it are covered.
-- ARGV[2] the user (escaped as in the record; "" for any); ARGV[3] the client (same).
-- ARGV[4], ARGV[5] the issue window's first and last µs, inclusive ("" for none).
-- ARGV[6] the mark to write; ARGV[7] the marks buckets' TTL (s); ARGV[8] the progress keys' TTL.
-- ARGV[9] the fields (sessions) to examine in this call before it stops: a bucket not begun that
-- would take the call past it is left to the next call, unless it is the call's first.
-- ARGV[10] HSCAN's COUNT; ARGV[11] the largest bucket read whole (HGETALL): a bigger one is read
-- in HSCAN pages, the call stopping past the page that reaches ARGV[9], the next call resuming.
-- ARGV[12] nb, the number of buckets; ARGV[13 .. 12 + nb] their numbers.
-- ARGV[13 + nb ..] the epoch and StoreCore.feed_args of the chunk's feed entry (its ids empty:
-- this step fills in the families it marked), as _sequence.lua reads them.
-- Returns {buckets finished (a prefix of the list), sessions revoked by this call, sessions
-- examined by this call}.
--
-- A record is "user|client|created|expires|..." (keys.RECORD_FIELDS, at least four parts:
-- keys.record_head); a value with fewer parts is not a record this version wrote and is left
-- alone. Its created time is read by keys.read_time (as rotate_refresh.lua; see there): one or
-- more ASCII digits and nothing else, capped at keys.MAX_TIME; an unreadable one is never
-- covered. tests/test_format_parity.py holds this selection to tasks.buckets.Selection.
local MAX_TIME = 9007199254740991
local progress, revoked_ids = KEYS[1], KEYS[2]
local cutoff = tonumber(ARGV[1])
local after = ARGV[4] ~= "" and tonumber(ARGV[4]) or nil
local before = ARGV[5] ~= "" and tonumber(ARGV[5]) or nil
local mark, mark_ttl, progress_ttl = ARGV[6], ARGV[7], ARGV[8]
local budget, count, whole = tonumber(ARGV[9]), ARGV[10], tonumber(ARGV[11])
local nb = tonumber(ARGV[12])
local integrity, feed = KEYS[3 + 2 * nb], KEYS[4 + 2 * nb]

-- One pattern for the whole selection but the times: the record's first three parts, the user
-- and the client as given (every character but letters and digits matched literally), and the
-- created time captured only when it is one or more ASCII digits (%d is 0-9 in every locale):
-- a value with fewer parts, another user or client, or an unreadable time does not match.
local function literal(part)
  if part == "" then return "[^|]*" end
  return (string.gsub(part, "%W", "%%%0"))
end
local covered = "^" .. literal(ARGV[2]) .. "|" .. literal(ARGV[3]) .. "|(%d+)|"

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

local numbers = {unpack(ARGV, 13, 12 + nb)}
numbers[nb + 1] = "n"
local states = redis.call("HMGET", progress, unpack(numbers))
numbers[nb + 1] = nil
local seen, revoked, finished = 0, 0, 0
local pages, reached = {}, {}
for j = 1, nb do
  local sessions, marks = KEYS[1 + 2 * j], KEYS[2 + 2 * j]
  local cursor = states[j] or "0"
  local size = cursor == "0" and redis.call("HLEN", sessions) or whole + 1
  -- A bucket not begun that would take this call past its budget is the next call's.
  if cursor == "0" and seen > 0 and seen + size > budget then break end
  if cursor ~= "d" then
    repeat
      local flat
      if size <= whole then
        flat = redis.call("HGETALL", sessions)  -- all of it, read once: cheaper than HSCAN
      else
        local page = redis.call("HSCAN", sessions, cursor, "COUNT", count)
        cursor, flat = page[1], page[2]
      end
      local ids, fields, n = {}, {}, 0
      for i = 1, #flat, 2 do
        local t = string.match(flat[i + 1], covered)
        if t then
          local at = tonumber(t)
          if at > MAX_TIME then at = MAX_TIME end
          if at <= cutoff and (not after or at >= after) and (not before or at <= before) then
            n = n + 1
            local id = flat[i]
            ids[n] = id
            fields[2 * n - 1] = id
            fields[2 * n] = mark
          end
        end
      end
      seen = seen + #flat / 2
      if n > 0 then
        call_in_parts("HSET", marks, fields)
        -- As StoreCore.bucket_ttl_commands: a new bucket gets the TTL, an older one is never
        -- shortened (GT only where NX found a TTL already).
        if redis.call("EXPIRE", marks, mark_ttl, "NX") == 0 then
          redis.call("EXPIRE", marks, mark_ttl, "GT")
        end
        call_in_parts("HDEL", sessions, ids)
        pages[#pages + 1] = ids
        revoked = revoked + n
      end
    until cursor == "0" or seen >= budget
    if cursor == "0" then cursor = "d" end
    reached[#reached + 1] = numbers[j]
    reached[#reached + 1] = cursor
  end
  if cursor == "d" and finished == j - 1 then finished = j end
  if seen >= budget then break end
end
reached[#reached + 1] = "n"
reached[#reached + 1] = string.format("%d", tonumber(states[nb + 1] or "0") + revoked)
call_in_parts("HSET", progress, reached)
if not states[nb + 1] then redis.call("EXPIRE", progress, progress_ttl) end
if revoked > 0 then
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
return {finished, revoked, seen}
