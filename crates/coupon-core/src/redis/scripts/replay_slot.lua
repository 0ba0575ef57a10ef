-- Takes a slot for a user whose OVER_QUANTITY event an operator replays (issuer-api's
-- issuing/failed_events.rs), before its row is written: the row then spends a unit of the
-- quantity that a slot accounts for (coupon-core/tests/replay_model.rs).
-- KEYS[1] the coupon's meta, KEYS[2] its issued set. ARGV[1] the user, ARGV[2] the stamp in
-- force (PostgreSQL's), which the row's transaction checks again.
-- Returns 0 when the state is not loaded, or not verified under that stamp here (being
-- rebuilt, or a copy not verified: retry), 1 when the user holds a slot already (their
-- admission's), 2 when one was taken now, 3 when none is free (raise the quantity first).
local meta = redis.call('HMGET', KEYS[1], 'quantity', 'epoch')
if not meta[1] or meta[2] ~= ARGV[2] or not stamped_here(meta[2]) then
  return 0
end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then
  return 1
end
if redis.call('SCARD', KEYS[2]) >= tonumber(meta[1]) then
  return 3
end
redis.call('SADD', KEYS[2], ARGV[1])
return 2
