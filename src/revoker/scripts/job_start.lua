-- Start a job, once: the first message to run a pending job claims it (the job's `attempt` field
-- names that message); any other copy finds it claimed and does nothing. Copies exist because the
-- outbox sweep publishes again a job no worker started within REVOKER_JOB_START_TIMEOUT (a broker
-- may have lost the first message, or only be slow): without the claim, two copies run at once
-- would plan the same job twice and dispatch its chunks twice.
-- KEYS[1]: the job hash. ARGV[1]: the message's attempt id ("" for a message without one: it runs
-- a started job again, as every message did before attempts existed); ARGV[2]: now (unix s).
-- Returns {verdict, snapshot, chunks_total}: verdict 1 = started by this message, 2 = a rerun by
-- the message that owns the job (a redelivery after a crash, a retry, or the stall watch's
-- takeover), 0 = not this message's to run (another copy owns it, or it finished or is gone).
local status = redis.call("HGET", KEYS[1], "status")
local verdict = 0
if status == "pending" then
  redis.call("HSET", KEYS[1], "status", "running", "attempt", ARGV[1])
  redis.call("HSETNX", KEYS[1], "started_at", ARGV[2])
  verdict = 1
elseif status == "running" then
  if ARGV[1] == "" or redis.call("HGET", KEYS[1], "attempt") == ARGV[1] then
    verdict = 2
  end
end
if verdict == 0 then
  return {0, "", ""}
end
return {
  verdict,
  redis.call("HGET", KEYS[1], "snapshot") or "",
  redis.call("HGET", KEYS[1], "chunks_total") or "",
}
