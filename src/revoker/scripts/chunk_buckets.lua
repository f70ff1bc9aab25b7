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
-- KEYS[3 .. 2 + 2 * nb] per bucket, its session bucket then its revoked-mark bucket.
-- KEYS[3 + 2 * nb], KEYS[4 + 2 * nb], if given: the integrity hash and the feed.
-- KEYS[1], KEYS[2] and ARGV, the record's format and the selection: _chunk.lua (prepended).
-- Returns {buckets finished (a prefix of the list), sessions revoked by this call, sessions
-- examined by this call}.
local integrity, feed = KEYS[3 + 2 * nb], KEYS[4 + 2 * nb]

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
        if t and in_range(tonumber(t)) then
          n = n + 1
          local id = flat[i]
          ids[n] = id
          fields[2 * n - 1] = id
          fields[2 * n] = mark
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
record_step(reached, revoked, pages, integrity, feed)
return {finished, revoked, seen}
