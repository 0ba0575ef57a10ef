-- The registry of coupons whose state Redis holds: coupon id -> generation.
-- KEYS[1] the registry hash, KEYS[2] its generation counter, KEYS[3] the epoch the registry
-- was last found complete under (all three share one hash tag).
--
-- register ARGV: 'register', couponId. Gives the coupon a new generation, never used before
--   (a counter, not a per-coupon number: a retire that read an old generation must not match a
--   registration made after the coupon was retired once, then registered again), prefixed
--   with the instance's epoch: a replica promoted without the primary's last increments
--   counts them again, and a retire that read one on the lost primary must not match.
--   Returns {generation, 1 if the coupon was not registered before else 0}.
-- retire ARGV: 'retire', couponId, generation. Removes the coupon only if its registration
--   is still the one the caller judged finished: a rebuild that registered it again since
--   keeps it. Returns 1 when removed.
-- unchecked ARGV: 'unchecked'. The instance's epoch if the registry was not found complete
--   under it (this instance restarted, or is a replica promoted, and may have lost
--   registrations: on a cluster the registry's shard can lose them while the coupons' own
--   shards, which would have sent them through a rebuild, did not), else false.
-- checked ARGV: 'checked', epoch. Records that every coupon with work was registered again
--   under `epoch`, if it is still this instance's (else it changed meanwhile and the caller's
--   registrations may have gone to the lost state). Returns 1 when recorded.
local op = ARGV[1]
if op == 'register' then
  local generation = instance_epoch() .. '.' .. redis.call('INCR', KEYS[2])
  local added = redis.call('HSET', KEYS[1], ARGV[2], generation)
  return {generation, added}
elseif op == 'retire' then
  if redis.call('HGET', KEYS[1], ARGV[2]) == ARGV[3] then
    return redis.call('HDEL', KEYS[1], ARGV[2])
  end
  return 0
elseif op == 'unchecked' then
  local id = instance_epoch()
  if redis.call('GET', KEYS[3]) == id then
    return false
  end
  return id
elseif op == 'checked' then
  if instance_epoch() ~= ARGV[2] then
    return 0
  end
  redis.call('SET', KEYS[3], ARGV[2])
  return 1
end
return redis.error_reply('registry: unknown operation ' .. tostring(op))
