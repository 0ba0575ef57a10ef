-- The Redis instance's epoch: its run id, new at every start and different on every replica,
-- and the replication id it had when its function library was first called after being
-- loaded. A coupon's meta records the epoch its state was verified under (from PostgreSQL,
-- or because it was just created); under any other epoch the state may be a rewound copy
-- (an append-only file that lost its tail, a replica promoted before it caught up, a
-- primary that resynced from such a replica and was then failed back to) and must be
-- verified again before it admits.
-- Read once and kept for as long as the function library stays loaded
-- (crate::redis::library): `INFO` builds a whole section to give one field, and admission
-- asks on every request. Why the kept value is right:
-- - The run id belongs to the server process, and so does the Lua state that keeps it: a
--   restart begins with a new run id and a new Lua state, and a replica keeps its own of
--   each whether or not promoted.
-- - A full sync (a replica, or a demoted primary, taking its primary's whole data set)
--   replaces the data set and loads the library again from it, so the epoch is read anew
--   at the next call, once the node serves as a primary: by then its replication id is a
--   new one (promotion gives one). The run id alone would survive that: a primary failed
--   over while its replica lagged, resynced from that replica and failed back to would
--   find its old stamps, copied back from the replica, matching it
--   (`failover_model.rs`, `Bug::EpochSurvivesResync`).
-- - A partial resync (the data set kept, continued from the new primary's stream) keeps
--   the library and the epoch: nothing the node had is discarded by one.
-- Every version of the library on an instance reads the same two values, so versions side
-- by side in a rolling upgrade agree, unless the instance was promoted between their
-- first calls without a full sync (a switchover and back): they then disagree until the
-- old version is gone, each rebuilding the other's stamps.
local epoch = nil
-- The epoch and the '/' that ends it in a stamp, kept with it: admission checks a stamp on
-- every request, and a string built there costs Redis an allocation and a hash each time.
local stamp_prefix = nil
local function instance_epoch()
  if not epoch then
    local run_id = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
    local replid = string.match(redis.call('INFO', 'replication'), 'master_replid:(%x+)')
    epoch = run_id .. '.' .. replid
    stamp_prefix = epoch .. '/'
  end
  return epoch
end

-- A coupon's stamp names one verification of its state: '<epoch>/<nonce>', the instance it
-- was verified under and a nonce of that verification alone. PostgreSQL keeps the stamp in
-- force (coupons.redis_stamp), and each API passes it with every admission. The epoch
-- catches a restart (a file that lost its tail) and a full sync; the nonce catches the rest:
-- a failback to an old primary never demoted, or a node re-pointed at a stale one without
-- a full sync, keeps its epoch and its old stamp, but the verification in force happened
-- elsewhere since, under another stamp.
local function stamped_here(stamp)
  instance_epoch()
  -- A plain find anchored at the first character: no string is made.
  return type(stamp) == 'string' and string.find(stamp, stamp_prefix, 1, true) == 1
end
