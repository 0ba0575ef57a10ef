-- The Redis instance's epoch: its run id, new at every start and different on every replica.
-- A coupon's meta records the epoch its state was verified under (from PostgreSQL, or
-- because it was just created); under any other epoch the state may be a rewound copy (an
-- append-only file that lost its tail, a replica promoted before it caught up) and must be
-- verified again before it admits. Prepended to the scripts that need it (crate::epoch).
local function instance_epoch()
  return string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
end

