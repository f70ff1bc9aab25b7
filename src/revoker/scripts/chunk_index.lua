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
-- KEYS[1], KEYS[2] and ARGV as chunk_buckets.lua's, in _chunk.lua (prepended; ARGV[9]: index
-- entries to examine in this call).
-- Returns {buckets finished (a prefix of the list), sessions revoked by this call, index entries
-- examined by this call}.
local integrity, feed = KEYS[3 + 3 * nb], KEYS[4 + 3 * nb]

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
record_step(reached, revoked, pages, integrity, feed)
return {finished, revoked, seen}
