-- The hand-over's close (`issuer-api hand-over`, a planned switchover of the primary that
-- keeps the coupons' state): closes the coupon only if its state is verified here, under
-- the stamp in force, and takes its rebuild lease with the hand-over's token in the same
-- step (so no rebuild starts while it runs, as rebuild_lease.lua's 'take' keeps one away).
-- KEYS[1] the lease key, KEYS[2] the coupon's meta hash (same hash tag).
-- ARGV[1] the hand-over's token, ARGV[2] the lease in ms, ARGV[3] the stamp in force.
--
-- Why the token is the proof: a replica receives its primary's writes in order, so a node
-- that holds this token holds every write this node made before it. After the switchover,
-- the coupon opens on the new primary (load_meta.lua's 'verified', which checks the token)
-- only where the token is there; elsewhere it stays closed and is rebuilt. Verified first:
-- closing a state that is already rewound would hand the rewind over.
-- Returns this node's epoch when closed (the hand-over then waits for a primary with
-- another), else false (not verified here, or a lease is held).
local stamp = redis.call('HGET', KEYS[2], 'epoch')
if stamp ~= ARGV[3] or not stamped_here(stamp) then
  return false
end
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return false
end
redis.call('HSET', KEYS[2], 'epoch', 'rebuilding')
return instance_epoch()
