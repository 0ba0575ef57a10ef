-- A coupon's rebuild lease: one owner at a time, and only its owner can end it.
-- KEYS[1] the lease key, KEYS[2] the coupon's meta hash (same hash tag).
-- ARGV[1] 'take' or 'end', ARGV[2] the owner's token, ARGV[3] (take) the lease in ms, and
-- ARGV[4] (take, may be '') the stamp in force as PostgreSQL gave it to the asker.
--
-- 'take': takes the lease if nobody holds it, and in the same step closes admission by
-- stamping the meta's epoch 'rebuilding' (admission and the finished check then answer as
-- for a state verified under another instance). A rebuild must run on a closed coupon:
-- with admission open, a user admitted after the rebuild read the pending entries and
-- released after it (their publish certainly failed) would be written back by the
-- rebuild, holding a slot with no event behind it. Closed here, the last admission came
-- before the lease, so its publish reports within the publish window the rebuild waits
-- before reading anything. Returns 1 when taken, 0 when another owner holds it, and 2,
-- taking nothing, when ARGV[4] is given and the state is verified under it on this node
-- (epoch.lua): a request that found the coupon closed asked for a rebuild, and the coupon
-- opened before the lease was asked for (a hand-over, or another process's rebuild), so a
-- rebuild now would only close it again.
-- 'end': deletes the lease only if ARGV[2] still holds it: a rebuilder whose lease ran out
-- while it worked must not end its successor's. Returns 1 when deleted, else 0.
if ARGV[1] == 'take' then
  if ARGV[4] ~= '' then
    local stamp = redis.call('HGET', KEYS[2], 'epoch')
    if stamp == ARGV[4] and stamped_here(stamp) then
      return 2
    end
  end
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
