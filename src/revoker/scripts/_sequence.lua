-- The Lua form of StoreCore.sequenced, prepended by store._base.load_script to every script that
-- writes revocation state (store._base.SEQUENCED_SCRIPTS): a write's sequence bump and its
-- change-feed entry (keys.py, "The change feed"), in the writing script's own atomic step.
-- Arguments come from StoreCore.script_sequence, at ARGV[a]: the epoch to create if absent, then
-- StoreCore.feed_args: the trim point (XADD MINID ~), the entry's k, t, i, v and x as
-- keys.encode_feed_entry writes them (strings: a Lua number past 1e14 would print as 1.7e+15).
-- feed is nil on a Redis Cluster, where the script cannot reach the feed: no entry there.
-- ids, if given, is the entry's i instead of the argument's (a bulk chunk's script names the
-- families it marked in the step itself, scripts/chunk_buckets.lua).
local function revoker_feed(feed, a, seq, ids)
  redis.call("XADD", feed, "MINID", "~", ARGV[a], "*", "k", ARGV[a + 1], "t", ARGV[a + 2],
    "i", ids or ARGV[a + 3], "v", ARGV[a + 4], "x", ARGV[a + 5], "s", seq)
end
-- The stored sequence by keys.read_seq's rule: one or more ASCII digits, at most keys.MAX_TIME;
-- missing or corrupt (anything else) reads 0, as Python reads it (a rollback signal, never an
-- error: HINCRBY would refuse "abc" or "007" and fail the revocation with it).
local function revoker_seq(value)
  if not value or not string.find(value, "^%d+$") then return 0 end
  local digits = string.match(value, "^0*(%d+)$")
  if #digits > 16 then return 0 end
  local seq = tonumber(digits)
  if seq > 9007199254740991 then return 0 end
  return seq
end
local function revoker_sequenced(integrity, feed, a, ids)
  redis.call("HSETNX", integrity, "epoch", ARGV[a])
  local seq = revoker_seq(redis.call("HGET", integrity, "seq")) + 1
  redis.call("HSET", integrity, "seq", string.format("%d", seq))
  if feed then revoker_feed(feed, a + 1, string.format("%d", seq), ids) end
  return seq
end
