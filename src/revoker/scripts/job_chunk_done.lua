-- Record one finished chunk of a bulk job, exactly once, and finish the job with its last chunk.
-- KEYS[1]: the job hash; KEYS[2]: the set of done chunk numbers; KEYS[3]: the deliveries hash.
-- ARGV[1]: chunk number; ARGV[2]: families matched; ARGV[3]: families revoked;
-- ARGV[4]: now (unix s); ARGV[5]: retention (s) of the finished job's keys.
-- A rerun chunk (redelivered after a crash) finds itself in the set and changes nothing, so no
-- chunk is counted twice. Returns {newly_done, job_finished}.
if redis.call("SADD", KEYS[2], ARGV[1]) == 0 then
  return {0, 0}
end
redis.call("HINCRBY", KEYS[1], "families_matched", ARGV[2])
redis.call("HINCRBY", KEYS[1], "families_revoked", ARGV[3])
local done = redis.call("HINCRBY", KEYS[1], "chunks_done", 1)
local total = tonumber(redis.call("HGET", KEYS[1], "chunks_total") or "-1")
if done >= total and redis.call("HGET", KEYS[1], "status") == "running" then
  redis.call("HSET", KEYS[1], "status", "done", "finished_at", ARGV[4])
  for i = 1, 3 do
    redis.call("EXPIRE", KEYS[i], ARGV[5])
  end
  return {1, 1}
end
return {1, 0}
