-- A replica confirmation's own write on a coupon's shard of a Redis Cluster, made only if the
-- admission it confirms ran on this very instance (issuer-api's `replication`).
-- KEYS[1] the coupon's fence key. ARGV[1] the stamp that admission passed, which names the
-- instance that decided (epoch.lua): one instance has one replication stream, so a replica
-- that has this write has that admission too.
-- Returns 1 after the write, or 0 with nothing written when another instance holds the
-- coupon now (a failover or a slot migration in between): a WAIT here would confirm nothing
-- of that admission.
if not stamped_here(ARGV[1]) then
  return 0
end
redis.call('INCR', KEYS[1])
return 1
