-- Refresh-token rotation with reuse detection: check and replace in one atomic step.
--
-- Every key lives in the tenant's slot except the optional jti key, global watermark and
-- integrity hash, which the caller passes only on a single Redis (on a cluster it checks the jti
-- and the global watermark beforehand).
-- KEYS[1] the user's session bucket   KEYS[2] the family's revoked-mark bucket
-- KEYS[3] user watermark
-- KEYS[4..] the tenant watermark if ARGV[12] == "1", then if ARGV[13] == "1" the jti key, the
-- global watermark, the integrity hash (a reuse mark bumps its seq, creating its epoch
-- ARGV[14] if absent: keys' "identity of the data") and the change feed (a reuse mark appends
-- its "family" entry, ARGV[15..]: see _sequence.lua), then, if the token names a client, the
-- family's client-index bucket (keys: "The client index"), written again on a rotation
-- ARGV[1] presented refresh jti         ARGV[2] presented iat (integer µs)
-- ARGV[3] the token's user id           ARGV[4] new refresh jti
-- ARGV[5] new access jti                ARGV[6] new pair's iat (integer µs)
-- ARGV[7] new refresh exp (unix s)      ARGV[8] grace window (s)
-- ARGV[9] bucket TTL (s)                ARGV[10] mark written on reuse "<at_us>|<reason>"
-- ARGV[11] family id (the field in both buckets)   ARGV[12], ARGV[13] see KEYS
-- Ids and jtis come escaped as the record stores them (keys.escape_part).
--
-- The record is one "|"-separated value, fields by position as in keys.RECORD_FIELDS:
-- 1 user, 2 client, 3 created, 4 expires, 5 current, 6 previous, 7 rotated (µs), 8 successor,
-- 9 issued (µs), 10 scopes.
--
-- Replies:
--   {"rotated"}                                       the pair the caller signed is now current
--   {"grace", access_jti, refresh_jti, iat_us}        retry of the token just rotated: re-sign these
--   {"reuse"}                                         superseded token: the family is now revoked
--   {"unknown"}                                       no such family (or not this user's)
--   {"revoked", jti, family, user_wm, tenant_wm, global_wm}  raw values for rules.decide
local bucket, revoked_key, user_wm_key = KEYS[1], KEYS[2], KEYS[3]
local presented, presented_iat, user = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local grace, ttl, family = tonumber(ARGV[8]), tonumber(ARGV[9]), ARGV[11]

local n = 4
local tenant_wm_key, jti_key, global_wm_key, integrity_key
if ARGV[12] == "1" then tenant_wm_key = KEYS[n]; n = n + 1 end
local feed_key
if ARGV[13] == "1" then
  jti_key, global_wm_key, integrity_key = KEYS[n], KEYS[n + 1], KEYS[n + 2]
  feed_key = KEYS[n + 3]
  n = n + 4
end
local index_key = KEYS[n]

-- keys.read_time, the one rule for a stored time: one or more ASCII digits and nothing else
-- (a mark's or watermark's part before its first "|"), capped at keys.MAX_TIME; anything else is
-- unreadable (nil). tests/test_format_parity.py holds this copy and set_watermark.lua's to it.
local MAX_TIME = 9007199254740991
local function read_time(part)
  if not string.find(part, "^%d+$") then return nil end
  return math.min(tonumber(part), MAX_TIME)
end
local function mark_time(value)
  return read_time(string.match(value, "^([^|]*)"))
end

-- The same revoked-or-not rules as revoker.rules.decide (which names the rule from these values):
-- a revoked jti or family (by its presence), or an iat at or before the later watermark, where
-- an unreadable watermark reads 0 as keys.decode_mark reads it.
local function mark_us(value)
  if not value then return -1 end
  return mark_time(value) or 0
end
local jti_v = jti_key and redis.call("GET", jti_key) or false
local fam_v = redis.call("HGET", revoked_key, family)
local user_v = redis.call("GET", user_wm_key)
local tenant_v = tenant_wm_key and redis.call("GET", tenant_wm_key) or false
local global_v = global_wm_key and redis.call("GET", global_wm_key) or false
if jti_v or fam_v
    or math.max(mark_us(user_v), mark_us(tenant_v), mark_us(global_v)) >= presented_iat then
  return {"revoked", jti_v, fam_v, user_v, tenant_v, global_v}
end

local record = redis.call("HGET", bucket, family)
if not record then
  return {"unknown"}
end
local f, i = {}, 1
while true do
  local j = string.find(record, "|", i, true)
  if not j then f[#f + 1] = string.sub(record, i); break end
  f[#f + 1] = string.sub(record, i, j - 1)
  i = j + 1
end
for k = #f + 1, 10 do f[k] = "" end
if f[1] ~= user then
  return {"unknown"}
end
-- The server's clock, not the callers': every service agrees on how old a rotation is.
local t = redis.call("TIME")
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])

if f[5] == presented then
  f[4], f[5], f[6] = ARGV[7], ARGV[4], presented
  f[7], f[8], f[9] = string.format("%.0f", now_us), ARGV[5], ARGV[6]
  redis.call("HSET", bucket, family, table.concat(f, "|", 1, 10))
  redis.call("EXPIRE", bucket, ttl)
  if index_key then
    -- The index entry (keys.encode_index_entry: the created time as stored) and the index
    -- bucket's TTL, renewed with the session's: also indexes a session from before the index.
    redis.call("HSET", index_key, family, f[3])
    redis.call("EXPIRE", index_key, ttl)
  end
  return {"rotated"}
end

-- A retry is honoured only from a record whose rotation time and issue time read by the rule:
-- otherwise its age is unknown and the successor's claims cannot be re-signed.
local rotated_us = read_time(f[7])
if grace > 0 and f[6] == presented and rotated_us and f[8] ~= "" and read_time(f[9])
    and now_us - rotated_us <= grace * 1000000 then
  return {"grace", f[8], f[5], f[9]}
end

redis.call("HSET", revoked_key, family, ARGV[10])
-- As StoreCore.bucket_ttl_commands: a new bucket gets the TTL, an older one is never shortened.
redis.call("EXPIRE", revoked_key, ttl, "NX")
redis.call("EXPIRE", revoked_key, ttl, "GT")
if integrity_key then revoker_sequenced(integrity_key, feed_key, 14) end
return {"reuse"}
