-- Lands a raised quantity in a coupon of one bucket (a bucketed coupon's buckets grow by
-- bucket.lua's steps instead). PostgreSQL's quantity was raised first, so Redis's is never
-- above the one the workers' quantity guard holds.
-- KEYS[1] the coupon's meta hash, KEYS[2] its issued set. ARGV[1] the quantity, as
-- PostgreSQL has it now, ARGV[2] the finished gates' hold in ms: a sold-out coupon's new
-- units are sold from then on (stock_hold.lua).
-- The quantity only grows: one already at it or above (a later raise landed first) is left.
-- No stamp is checked: any state, even a rewound copy, may take a quantity PostgreSQL
-- holds, and its rebuild keeps the larger one (load_meta.lua).
-- Returns 1 when the meta holds the quantity or more, 0 when there is no meta (its
-- rebuild, reading PostgreSQL after the raise, will write it).
local quantity = redis.call('HGET', KEYS[1], 'quantity')
if not quantity then
  return 0
end
if tonumber(quantity) < tonumber(ARGV[1]) then
  hold_returned_stock(KEYS[1], KEYS[2], ARGV[2])
  redis.call('HSET', KEYS[1], 'quantity', ARGV[1])
end
return 1
