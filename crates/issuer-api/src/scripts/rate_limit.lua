-- Fixed-window rate limits on the issue route, shared by every API replica.
-- KEYS the counters (the user's, the client address's, or one of them: on a cluster each is
-- on a slot of its own and runs alone).
-- ARGV[1] window ms, then each key's limit in KEYS' order; a limit of 0 is no limit.
-- A refused request still counts, so a client that keeps hammering stays refused.
-- Returns 0 when allowed, else the ms until the window that refused it ends.
-- The counters live a window (a second by default) and are worth nothing after a restart or
-- a failover: kept out of the append-only file and the replication stream, so that under
-- `appendfsync always` a request Redis only refuses or counts (a sold-out answer, a 429)
-- waits for no disk sync, and replicas are not sent a write per request. A counter lost
-- with its primary only lets a client start its window again.
redis.set_repl(redis.REPL_NONE)
local window = tonumber(ARGV[1])
local wait = 0
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[i + 1])
  if limit > 0 then
    local count = redis.call('INCR', key)
    if count == 1 then
      redis.call('PEXPIRE', key, window)
    end
    if count > limit then
      local left = redis.call('PTTL', key)
      if left > wait then
        wait = left
      end
    end
  end
end
return wait
