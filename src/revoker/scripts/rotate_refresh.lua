-- Refresh-token rotation with reuse detection: check and replace in one atomic step.
--
-- Every key lives in the tenant's slot except the optional jti key, which the caller passes only
-- on a single Redis (on a cluster it checks the jti beforehand).
-- KEYS[1] family hash        KEYS[2] family-revoked marker   KEYS[3] user watermark
-- KEYS[4] tenant index       KEYS[5] user index
-- KEYS[6..] the tenant watermark if ARGV[12] == "1", then the jti key if ARGV[13] == "1"
-- ARGV[1] presented refresh jti         ARGV[2] presented iat (integer µs)
-- ARGV[3] the token's user id           ARGV[4] new refresh jti
-- ARGV[5] new access jti                ARGV[6] new pair's iat (integer µs)
-- ARGV[7] new refresh exp (unix s)      ARGV[8] grace window (s)
-- ARGV[9] family TTL (s)                ARGV[10] mark written on reuse "<at_us>|<reason>"
-- ARGV[11] family id                    ARGV[12], ARGV[13] see KEYS
-- ARGV[14..20] family hash field names: user, current, previous, rotated, successor, issued,
--              expires (keys.FAMILY_FIELDS is their one definition)
--
-- Replies:
--   {"rotated"}                                       the pair the caller signed is now current
--   {"grace", access_jti, refresh_jti, iat_us}        retry of the token just rotated: re-sign these
--   {"reuse"}                                         superseded token: the family is now revoked
--   {"unknown"}                                       no such family (or not this user's)
--   {"revoked", jti, family, user_wm, tenant_wm}      raw values for rules.decide; nothing written
local fam_key, revoked_key, user_wm_key = KEYS[1], KEYS[2], KEYS[3]
local tenant_index, user_index = KEYS[4], KEYS[5]
local presented, presented_iat, user = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local grace, ttl = tonumber(ARGV[8]), tonumber(ARGV[9])
local F_USER, F_CUR, F_PRV, F_ROT = ARGV[14], ARGV[15], ARGV[16], ARGV[17]
local F_NXT, F_ISSUED, F_EXP = ARGV[18], ARGV[19], ARGV[20]

local n = 6
local tenant_wm_key, jti_key
if ARGV[12] == "1" then tenant_wm_key = KEYS[n]; n = n + 1 end
if ARGV[13] == "1" then jti_key = KEYS[n] end

-- The same revoked-or-not rules as revoker.rules.decide (which names the rule from these values):
-- a revoked jti or family, or an iat at or before the later watermark.
local function mark_us(value)
  if not value then return -1 end
  return tonumber(string.match(value, "^(%d+)")) or 0
end
local jti_v = jti_key and redis.call("GET", jti_key) or false
local fam_v = redis.call("GET", revoked_key)
local user_v = redis.call("GET", user_wm_key)
local tenant_v = tenant_wm_key and redis.call("GET", tenant_wm_key) or false
if jti_v or fam_v or math.max(mark_us(user_v), mark_us(tenant_v)) >= presented_iat then
  return {"revoked", jti_v, fam_v, user_v, tenant_v}
end

local fam = redis.call("HMGET", fam_key, F_USER, F_CUR, F_PRV, F_ROT, F_NXT, F_ISSUED)
if not fam[1] or fam[1] ~= user then
  return {"unknown"}
end
-- The server's clock, not the callers': every service agrees on how old a rotation is.
local t = redis.call("TIME")
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000

if fam[2] == presented then
  redis.call("HSET", fam_key,
    F_CUR, ARGV[4], F_PRV, presented, F_ROT, string.format("%.6f", now),
    F_NXT, ARGV[5], F_ISSUED, ARGV[6], F_EXP, ARGV[7])
  redis.call("EXPIRE", fam_key, ttl)
  -- Scores are expiries: keep them current, or the expiry task would prune a live session from
  -- the indexes the bulk jobs walk.
  redis.call("ZADD", tenant_index, ARGV[7], ARGV[11])
  redis.call("EXPIRE", tenant_index, ttl)
  redis.call("ZADD", user_index, ARGV[7], ARGV[11])
  redis.call("EXPIRE", user_index, ttl)
  return {"rotated"}
end

if grace > 0 and fam[3] == presented and fam[4] and fam[5] and fam[6]
    and now - tonumber(fam[4]) <= grace then
  return {"grace", fam[5], fam[2], fam[6]}
end

redis.call("SET", revoked_key, ARGV[10], "EX", ttl)
return {"reuse"}
