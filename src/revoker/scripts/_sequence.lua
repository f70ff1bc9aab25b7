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
local function revoker_sequenced(integrity, feed, a, ids)
  redis.call("HSETNX", integrity, "epoch", ARGV[a])
  local seq = redis.call("HINCRBY", integrity, "seq", 1)
  if feed then revoker_feed(feed, a + 1, string.format("%d", seq), ids) end
  return seq
end
