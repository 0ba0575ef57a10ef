-- Caches a coupon's quantity and window next to its issued set, once.
-- KEYS[1] coupon meta hash. ARGV[1] quantity, ARGV[2] starts_at ms or '', ARGV[3] ends_at ms or ''.
-- An existing meta is never overwritten (a racing replica may have loaded it first),
-- and the issued set is not touched. Returns 1 when it wrote, 0 when meta was there.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'quantity', ARGV[1])
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], 'starts_at', ARGV[2])
end
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[1], 'ends_at', ARGV[3])
end
return 1
