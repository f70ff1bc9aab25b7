-- A client-filtered job's chunk, revoked server-side through the client index
-- (tasks.buckets.revoke_server_side with an index walk; keys: "The client index"): as
-- chunk_buckets.lua, but each bucket's candidates come from its client-index bucket (family id
-- -> created µs), so a call reads only the client's sessions, not every record of the bucket.
-- The index is a hint: each candidate's record is read (HMGET) and selected by the record, with
-- the same pattern and times as chunk_buckets.lua; an entry whose record is gone is dropped.
-- Per call, in one atomic step: the selected records get their revoked mark (HSET into the
-- bucket's marks, EXPIRE NX and GT), are removed (HDEL) with their index entries, and the
-- bucket's progress is recorded; the sequence is bumped and the feed entry appended as there.
--
-- KEYS[1] the chunk's progress hash, KEYS[2] the chunk's revoked family ids (as
--         chunk_buckets.lua; a bucket's cursor here is its index bucket's HSCAN cursor).
-- KEYS[3 .. 2 + 3 * nb] per bucket, its client-index bucket, session bucket, revoked-mark bucket.
-- KEYS[3 + 3 * nb], KEYS[4 + 3 * nb], if given: the integrity hash and the feed.
-- ARGV as chunk_buckets.lua's (ARGV[9]: index entries to examine in this call).
-- Returns {buckets finished (a prefix of the list), sessions revoked by this call, index entries
-- examined by this call}.
local MAX_TIME = 9007199254740991
local progress, revoked_ids = KEYS[1], KEYS[2]
local cutoff = tonumber(ARGV[1])
local after = ARGV[4] ~= "" and tonumber(ARGV[4]) or nil
local before = ARGV[5] ~= "" and tonumber(ARGV[5]) or nil
local mark, mark_ttl, progress_ttl = ARGV[6], ARGV[7], ARGV[8]
local budget, count, whole = tonumber(ARGV[9]), ARGV[10], tonumber(ARGV[11])
local nb = tonumber(ARGV[12])
local integrity, feed = KEYS[3 + 3 * nb], KEYS[4 + 3 * nb]

-- The selection of chunk_buckets.lua, on the record (tests/test_format_parity.py holds both to
-- tasks.buckets.Selection).
local function literal(part)
  if part == "" then return "[^|]*" end
  return (string.gsub(part, "%W", "%%%0"))
end
local covered = "^" .. literal(ARGV[2]) .. "|" .. literal(ARGV[3]) .. "|(%d+)|"
local function in_range(at)
  if at > MAX_TIME then at = MAX_TIME end
  return at <= cutoff and (not after or at >= after) and (not before or at <= before)
end

local function escape_feed_id(id)
  return (string.gsub(id, "[^A-Za-z0-9%-%._~@%+=!%$&'%(%)%*;]", function(c)
    return string.format("%%%02X", string.byte(c))
  end))
end

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
  local index, sessions, marks = KEYS[3 * j], KEYS[3 * j + 1], KEYS[3 * j + 2]
  local cursor = states[j] or "0"
  local size = cursor == "0" and redis.call("HLEN", index) or whole + 1
  if cursor == "0" and seen > 0 and seen + size > budget then break end
  if cursor ~= "d" then
    repeat
      local flat
      if size <= whole then
        flat = redis.call("HGETALL", index)
      else
        local page = redis.call("HSCAN", index, cursor, "COUNT", count)
        cursor, flat = page[1], page[2]
      end
      -- Candidates: entries whose indexed time is in the job's range, or unreadable (the
      -- record decides: keys.decode_index_entry).
      local candidates, c = {}, 0
      for i = 1, #flat, 2 do
        local t = flat[i + 1]
        if not string.find(t, "^%d+$") or in_range(tonumber(t)) then
          c = c + 1
          candidates[c] = flat[i]
        end
      end
      seen = seen + #flat / 2
      local ids, fields, gone, n = {}, {}, {}, 0
      for i = 1, c, 1000 do
        local last = math.min(c, i + 999)
        local records = redis.call("HMGET", sessions, unpack(candidates, i, last))
        for r = 1, last - i + 1 do
          local id, value = candidates[i + r - 1], records[r]
          if not value then
            gone[#gone + 1] = id  -- its record is gone: the entry goes too
          else
            local t = string.match(value, covered)
            if t and in_range(tonumber(t)) then
              n = n + 1
              ids[n] = id
              fields[2 * n - 1] = id
              fields[2 * n] = mark
            end
          end
        end
      end
      if n > 0 then
        call_in_parts("HSET", marks, fields)
        if redis.call("EXPIRE", marks, mark_ttl, "NX") == 0 then
          redis.call("EXPIRE", marks, mark_ttl, "GT")
        end
        call_in_parts("HDEL", sessions, ids)
        call_in_parts("HDEL", index, ids)
        pages[#pages + 1] = ids
        revoked = revoked + n
      end
      if #gone > 0 then call_in_parts("HDEL", index, gone) end
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
