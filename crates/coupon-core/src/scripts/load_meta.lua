-- Caches a coupon's quantity and window next to its issued set, and records the epoch the
-- state is verified under (epoch.lua).
-- KEYS[1] coupon meta hash, and in the 'verified' mode KEYS[2] its rebuild lease.
-- ARGV[1] quantity, ARGV[2] starts_at ms or '', ARGV[3] ends_at ms or '', ARGV[4] the mode,
-- and in the 'verified' mode ARGV[5] the rebuild's lease token:
--   'fresh': the coupon was just created, nothing can have been admitted. An existing meta
--     (a racing replica loaded it first) is left as it is. Returns 1 when it wrote, else 0.
--   'verified:<epoch>': a rebuild has added every holder it found, reading under <epoch>.
--     The meta is written (an existing one keeps its fields) and stamped with the epoch, if
--     the instance is still the one the rebuild read and the rebuild still holds its lease;
--     returns 1, else 0 (Redis restarted or failed over meanwhile, or the lease ran out and
--     another rebuild owns the coupon now: this one's reading may be stale).
-- The issued set is not touched.
local epoch = instance_epoch()
local mode = ARGV[4]
if mode == 'fresh' then
  if redis.call('EXISTS', KEYS[1]) == 1 then
    return 0
  end
elseif mode ~= 'verified:' .. epoch or redis.call('GET', KEYS[2]) ~= ARGV[5] then
  return 0
end
redis.call('HSETNX', KEYS[1], 'quantity', ARGV[1])
if ARGV[2] ~= '' then
  redis.call('HSETNX', KEYS[1], 'starts_at', ARGV[2])
end
if ARGV[3] ~= '' then
  redis.call('HSETNX', KEYS[1], 'ends_at', ARGV[3])
end
redis.call('HSET', KEYS[1], 'epoch', epoch)
return 1
