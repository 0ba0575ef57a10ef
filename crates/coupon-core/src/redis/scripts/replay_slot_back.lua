-- Gives back a slot replay_slot.lua took, for a row the database refused all the same,
-- before the replay's transaction commits. Stock that comes back to a sold-out coupon is
-- held for the finished gates' hold, as a released slot is (stock_hold.lua): a gate shut
-- with this user among its holders must have run out before the unit is sold again.
-- KEYS[1] the coupon's meta, KEYS[2] its issued set. ARGV[1] the user, ARGV[2] the hold in
-- ms. Returns 1 if the slot was there.
hold_returned_stock(KEYS[1], KEYS[2], ARGV[2])
return redis.call('SREM', KEYS[2], ARGV[1])
