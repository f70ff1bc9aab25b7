-- StoreCore.sequenced's last command inside a write's MULTI/EXEC (sent as EVAL, so a restarted
-- server without the script cache cannot fail it after the write ran): the sequence bump and
-- the change-feed entry, with the sequence the bump gives.
-- KEYS[1] the integrity hash, KEYS[2] the feed; ARGV as _sequence.lua reads them from ARGV[1].
return revoker_sequenced(KEYS[1], KEYS[2], 1)
