-- First-come-first-served admission, decided atomically for one (coupon, user).
-- KEYS[1] coupon meta hash, KEYS[2] issued-user set, KEYS[3] in-doubt hash (same hash tag).
-- ARGV[1] user id.
-- Returns {code, now_ms, event}; now_ms is Redis's clock, so every API replica agrees on
-- the window and on the event's issuedAt; event is '' except for code 6.
--   0 meta not loaded (the caller rebuilds the coupon's state, then asks again)
--   1 SUCCESS  2 ALREADY_ISSUED  3 SOLD_OUT  4 NOT_STARTED  5 ENDED
--   6 IN_DOUBT: this user's earlier publish may have failed; event is what to publish again
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local meta = redis.call('HMGET', KEYS[1], 'quantity', 'starts_at', 'ends_at')
if not meta[1] then
  return {0, now, ''}
end
local pending = redis.call('HGET', KEYS[3], ARGV[1])
if pending then
  return {6, now, pending}
end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then
  return {2, now, ''}
end
if meta[2] and now < tonumber(meta[2]) then
  return {4, now, ''}
end
if meta[3] and now >= tonumber(meta[3]) then
  return {5, now, ''}
end
if redis.call('SCARD', KEYS[2]) >= tonumber(meta[1]) then
  return {3, now, ''}
end
redis.call('SADD', KEYS[2], ARGV[1])
return {1, now, ''}
