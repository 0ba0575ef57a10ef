-- Caches a coupon's quantity and window next to its issued set, and stamps the state as
-- verified (epoch.lua: the stamp names the instance and this verification).
-- KEYS[1] coupon meta hash, and in the 'verified' mode KEYS[2] its rebuild lease.
-- ARGV[1] quantity, ARGV[2] starts_at ms or '', ARGV[3] ends_at ms or '', ARGV[4] the mode,
-- and ARGV[5] in the 'fresh' mode the stamp's nonce, in the 'verified' mode the whole stamp
-- (recorded in PostgreSQL first) and ARGV[6] the rebuild's lease token ('' when fresh), and
-- ARGV[7], for one bucket of a bucketed coupon (buckets.rs), the coupon's number of
-- buckets ('' for a coupon's own meta; ARGV[1] is then the bucket's allocation), ARGV[8]
-- the operator settings' version and ARGV[9] '1' if paused, else '' (as PostgreSQL has
-- them; written only over an older version: coupon-core/tests/settings_model.rs):
--   'fresh': the coupon was just created, nothing can have been admitted. An existing meta
--     (a racing replica loaded it first) is left as it is.
--   'verified': a rebuild has added every holder it found, reading under the stamp's
--     epoch. The meta is written (an existing one keeps its window, and the larger quantity)
--     and stamped, if the instance is still the one the stamp names and the rebuild still
--     holds its lease (else Redis restarted or failed over meanwhile, or the lease ran out and another rebuild owns the coupon
--     now: this one's reading may be stale).
-- Returns the stamp written, or false when it wrote nothing. The issued set is not touched.
local mode = ARGV[4]
if mode == 'fresh' then
  if redis.call('EXISTS', KEYS[1]) == 1 then
    return false
  end
elseif mode ~= 'verified' or not stamped_here(ARGV[5])
    or redis.call('GET', KEYS[2]) ~= ARGV[6] then
  return false
end
-- The larger of the two: the quantity only grows, and a raise commits PostgreSQL before it
-- raises Redis's (raise.lua), so neither is ever above PostgreSQL's, and a rebuild that
-- read PostgreSQL before a raise landed here meanwhile does not undo it.
local quantity = redis.call('HGET', KEYS[1], 'quantity')
if not quantity or tonumber(quantity) < tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'quantity', ARGV[1])
end
if ARGV[2] ~= '' then
  redis.call('HSETNX', KEYS[1], 'starts_at', ARGV[2])
end
if ARGV[7] ~= '' then
  redis.call('HSETNX', KEYS[1], 'buckets', ARGV[7])
  -- A first load: the allocation is the share (bucket.lua's grow adds to it).
  redis.call('HSETNX', KEYS[1], 'share', ARGV[1])
end
-- A rebuild that read PostgreSQL before a change landed here meanwhile does not undo it.
if tonumber(ARGV[8]) > tonumber(redis.call('HGET', KEYS[1], 'settings') or '-1') then
  -- The end is one of the settings: written with them, held by nothing (a rebuild opens a
  -- hold after it closed the coupon; a first load follows no gate).
  write_settings(KEYS[1], ARGV[8], ARGV[9], ARGV[3], '0')
end
-- A creation's stamp has the shape of Stamp::fresh's.
local stamp = ARGV[5]
if mode == 'fresh' then
  stamp = instance_epoch() .. '/' .. ARGV[5]
end
redis.call('HSET', KEYS[1], 'epoch', stamp)
return stamp
