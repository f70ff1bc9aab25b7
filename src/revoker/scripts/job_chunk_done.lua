-- The one place a bulk job finishes: with its last chunk, or at once (no chunks, a failure, the
-- family-reuse follow-up). A finished job never changes status again.
-- KEYS[1]: the job hash; KEYS[2]: the set of done chunk numbers; KEYS[3]: the deliveries hash.
-- ARGV[1]: chunk number, or "" to finish the job now; ARGV[2]: families matched; ARGV[3]:
-- families revoked (both counted with the chunk); ARGV[4]: now (unix s); ARGV[5]: retention (s)
-- of the finished job's keys; ARGV[6]: the status to finish with; ARGV[7]: the status a job
-- must have for its last chunk to finish it; ARGV[8]: how many statuses follow, those a job can
-- be finished from; then those statuses; then field, value pairs written on finishing.
-- A rerun chunk (redelivered after a crash) finds itself in the set and changes nothing, so no
-- chunk is counted twice. Returns {newly_done, job_finished}.
local n = tonumber(ARGV[8])
local status = redis.call("HGET", KEYS[1], "status")
if ARGV[1] ~= "" then
  if redis.call("SADD", KEYS[2], ARGV[1]) == 0 then
    return {0, 0}
  end
  redis.call("HINCRBY", KEYS[1], "families_matched", ARGV[2])
  redis.call("HINCRBY", KEYS[1], "families_revoked", ARGV[3])
  local done = redis.call("HINCRBY", KEYS[1], "chunks_done", 1)
  local total = tonumber(redis.call("HGET", KEYS[1], "chunks_total") or "-1")
  if done < total or status ~= ARGV[7] then
    return {1, 0}
  end
end
local active = false
for i = 9, 8 + n do
  if status == ARGV[i] then
    active = true
  end
end
if not active then
  return {1, 0}
end
local fields = {"status", ARGV[6], "finished_at", ARGV[4]}
for i = 9 + n, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
redis.call("HSET", KEYS[1], unpack(fields))
for i = 1, 3 do
  redis.call("EXPIRE", KEYS[i], ARGV[5])
end
return {1, 1}
