-- Fixed-window rate limits on the issue route, shared by every API replica.
-- KEYS[1] the user's counter, KEYS[2] the client address's counter (both with the `{rate}`
-- hash tag, so one script may touch them on Redis Cluster too).
-- ARGV[1] window ms, ARGV[2] user limit, ARGV[3] address limit; a limit of 0 is no limit.
-- A refused request still counts, so a client that keeps hammering stays refused.
-- Returns 0 when allowed, else the ms until the window that refused it ends.
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
