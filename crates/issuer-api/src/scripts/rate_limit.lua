-- Adds one API instance's counts of a sync interval to the rate limits' shared counters
-- (`rate_limit.rs`), and answers each counter's total: every replica counts what the others
-- did.
-- KEYS the counters (on a cluster, one: each is on a slot of its own).
-- ARGV[1] in how many ms the counters expire (a window after theirs ends, as the API
-- reckons it: relative, so Redis's clock does not matter), then each key's count in KEYS'
-- order.
-- Returns each counter's total, in KEYS' order.
-- The counters live a window (a second by default) and are worth nothing after a restart or
-- a failover: kept out of the append-only file and the replication stream, so that under
-- `appendfsync always` no sync of the counts waits for the disk, and replicas are not sent
-- them. A counter lost with its primary only lets a client start its window again.
redis.set_repl(redis.REPL_NONE)
local totals = {}
for i, key in ipairs(KEYS) do
  totals[i] = redis.call('INCRBY', key, ARGV[i + 1])
  redis.call('PEXPIRE', key, ARGV[1])
end
return totals
