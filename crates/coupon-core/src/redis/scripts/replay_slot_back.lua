-- Gives back a slot replay_slot.lua took, for a row the database refused all the same,
-- before the replay's transaction commits.
-- A coupon's own state: the slot goes. Stock that comes back to a sold-out coupon is held
-- for the finished gates' hold, as a released slot is (stock_hold.lua): a gate shut with
-- this user among its holders must have run out before the unit is sold again.
-- A bucket of a bucketed coupon: the slot is only flagged as being given back, with a
-- pending entry in the 'releasing' state, as ledger.lua's release flags one: freed at once,
-- its unit would be for sale while the other buckets' sold-out marks, set while the slot
-- was held, answer SOLD_OUT (coupon-core/tests/replay_model.rs, GiveBackIntoStock). A
-- mover's reopen clears every mark, then frees it (bucket.lua's restock); the reconciler
-- runs one for any it finds left.
-- KEYS[1] the meta, KEYS[2] the issued set, and for a bucket KEYS[3] its pending hash and
-- KEYS[4] its set of users whose slot is being given back. ARGV[1] the user, ARGV[2] the
-- hold in ms, and for a bucket ARGV[3] the replayed event's id and ARGV[4] its issued ms
-- (the entry's codec is ledger.lua's). Returns 1 if the slot was there.
if KEYS[4] then
  if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 0 then
    return 0
  end
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[3] .. ' ' .. ARGV[4] .. ' releasing ' .. now .. ' 0')
  redis.call('SADD', KEYS[4], ARGV[1])
  return 1
end
hold_returned_stock(KEYS[1], KEYS[2], ARGV[2])
return redis.call('SREM', KEYS[2], ARGV[1])
