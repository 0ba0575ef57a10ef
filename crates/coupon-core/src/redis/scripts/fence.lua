-- A replica confirmation's own write on a coupon's shard of a Redis Cluster, made only if the
-- admission it confirms ran on this very instance, in this incarnation, under the state
-- verification still in force here (issuer-api's `replication`).
-- KEYS[1] the coupon's fence key, KEYS[2] its meta hash. ARGV[1] the stamp that admission
-- passed, which names the instance that decided (epoch.lua): one instance has one
-- replication stream, so a replica that has this write has that admission too. The epoch
-- in the stamp changes with a full sync, which discards what only this instance had: a
-- primary failed over, resynced from its successor and failed back to does not confirm
-- what the resync took from it. The meta's stamp must be the one passed still: a rebuild
-- in between replaced the state the admission was decided on.
-- Returns 1 after the write, or 0 with nothing written when another instance (or another
-- verification) holds the coupon now: a WAIT here would confirm nothing of that admission.
if redis.call('HGET', KEYS[2], 'epoch') ~= ARGV[1] or not stamped_here(ARGV[1]) then
  return 0
end
redis.call('INCR', KEYS[1])
return 1
