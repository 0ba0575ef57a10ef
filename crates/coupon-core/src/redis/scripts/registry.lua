-- The registry of coupons whose state Redis holds: coupon id -> generation.
-- KEYS[1] the registry hash, KEYS[2] its generation counter (same hash tag).
--
-- register ARGV: 'register', couponId. Gives the coupon a new generation, never used before
--   (a counter, not a per-coupon number: a retire that read an old generation must not match a
--   registration made after the coupon was retired once, then registered again).
--   Returns {generation, 1 if the coupon was not registered before else 0}.
-- retire ARGV: 'retire', couponId, generation. Removes the coupon only if its registration
--   is still the one the caller judged finished: a rebuild that registered it again since
--   keeps it. Returns 1 when removed.
local op = ARGV[1]
if op == 'register' then
  local generation = redis.call('INCR', KEYS[2])
  local added = redis.call('HSET', KEYS[1], ARGV[2], generation)
  return {generation, added}
elseif op == 'retire' then
  if redis.call('HGET', KEYS[1], ARGV[2]) == ARGV[3] then
    return redis.call('HDEL', KEYS[1], ARGV[2])
  end
  return 0
end
return redis.error_reply('registry.lua: unknown operation ' .. tostring(op))
