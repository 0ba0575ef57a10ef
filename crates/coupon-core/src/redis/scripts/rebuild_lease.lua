-- A coupon's rebuild lease: one owner at a time, and only its owner can end it.
-- KEYS[1] the lease key, KEYS[2] the coupon's meta hash (same hash tag).
-- ARGV[1] 'take' or 'end', ARGV[2] the owner's token, ARGV[3] (take) the lease in ms.
--
-- 'take': takes the lease if nobody holds it, and in the same step closes admission by
-- stamping the meta's epoch 'rebuilding' (admission and the finished check then answer as
-- for a state verified under another instance). A rebuild must run on a closed coupon:
-- with admission open, a user admitted after the rebuild read the pending entries and
-- released after it (their publish certainly failed) would be written back by the
-- rebuild, holding a slot with no event behind it. Closed here, the last admission came
-- before the lease, so its publish reports within the publish window the rebuild waits
-- before reading anything. Returns 1 when taken, else 0.
-- 'end': deletes the lease only if ARGV[2] still holds it: a rebuilder whose lease ran out
-- while it worked must not end its successor's. Returns 1 when deleted, else 0.
if ARGV[1] == 'take' then
  if not redis.call('SET', KEYS[1], ARGV[2], 'NX', 'PX', ARGV[3]) then
    return 0
  end
  -- A missing meta is marked too: a creation's first load (load_meta.lua's 'fresh') finds
  -- it there and leaves admission to the rebuild, which would otherwise read while open.
  redis.call('HSET', KEYS[2], 'epoch', 'rebuilding')
  return 1
end
if redis.call('GET', KEYS[1]) == ARGV[2] then
  return redis.call('DEL', KEYS[1])
end
return 0
