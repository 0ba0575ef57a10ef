-- The Redis instance's epoch: its run id, new at every start and different on every replica.
-- A coupon's meta records the epoch its state was verified under (from PostgreSQL, or
-- because it was just created); under any other epoch the state may be a rewound copy (an
-- append-only file that lost its tail, a replica promoted before it caught up) and must be
-- verified again before it admits.
-- Read once and kept for as long as the function library stays loaded
-- (crate::redis::library): `INFO server` builds the whole section to give one field, and
-- admission asks on every request. The kept value cannot go stale: the run id belongs to
-- the server process, and so does the Lua state that keeps it. A restart begins with a new
-- run id and a new Lua state, and a replica keeps its own of each whether or not promoted.
local run_id = nil
local function instance_epoch()
  if not run_id then
    run_id = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
  end
  return run_id
end

-- A coupon's stamp names one verification of its state: '<run id>/<nonce>', the instance it
-- was verified under and a nonce of that verification alone. PostgreSQL keeps the stamp in
-- force (coupons.redis_stamp), and each API passes it with every admission. The run id
-- catches a restart (a file that lost its tail); the nonce catches the rest: a failback to
-- an old primary, or a node re-pointed at a stale one, keeps its run id and its old stamp,
-- but the verification in force happened elsewhere since, under another stamp.
local function stamped_here(stamp)
  local id = instance_epoch()
  return type(stamp) == 'string' and string.sub(stamp, 1, #id + 1) == id .. '/'
end
