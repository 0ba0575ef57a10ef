-- Takes a slot for a user whose failed event an operator replays (issuer-api's
-- issuing/failed_events.rs), once its row is written in the caller's transaction and before
-- it commits: the row then spends a unit of the quantity that a slot accounts for
-- (coupon-core/tests/replay_model.rs). The caller holds the coupon's row in PostgreSQL until
-- the row commits, and rolls the row back when no slot is had.
-- KEYS[1] the coupon's meta, KEYS[2] its issued set, KEYS[3] its pending hash (Kafka
-- mode's ledger). ARGV[1] the user, ARGV[2] the stamp in force (PostgreSQL's).
-- Returns 0 when the state is not loaded, or not open under that stamp here (closed for
-- its rebuild, or a copy not verified: retry), 1 when the user holds a settled slot
-- already (their admission's), 2 when one was taken now, 3 when none is free (raise the
-- quantity first), 4 when the user's slot is pending: an admission of theirs is still
-- being delivered, and may yet be given back (ledger.lua), so it cannot carry the row.
local meta = redis.call('HMGET', KEYS[1], 'quantity', 'epoch')
if not meta[1] or meta[2] ~= ARGV[2] or not stamped_here(meta[2]) then
  return 0
end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then
  if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then
    return 4
  end
  return 1
end
if redis.call('SCARD', KEYS[2]) >= tonumber(meta[1]) then
  return 3
end
redis.call('SADD', KEYS[2], ARGV[1])
return 2
