-- Restores one bucket of a bucketed coupon after its node lost or rewound it (buckets.rs,
-- the model's Rebuild): its holders, allocation, credited transfers and outgoing entry as the
-- log and the journal in PostgreSQL have them, and its stamp, which reopens it. The caller
-- has cleared every other bucket's mark first, and has staged the holders in two keys named
-- after its lease: KEYS[7] the log's users of this bucket (PostgreSQL's rows), KEYS[9] those
-- whose events are unsettled (pending entries read before PostgreSQL). They replace the
-- issued set here, after the checks, so that a rebuilder whose lease ran out cannot erase the
-- holders its successor wrote back.
-- KEYS[1] meta, KEYS[2] issued set, KEYS[3] outgoing transfer, KEYS[4] credited set, KEYS[5]
-- the rebuild lease, KEYS[6] the users whose slot was being given back, KEYS[7] and KEYS[9]
-- the staged holders, KEYS[8] the pending hash (all with the bucket's hash tag).
-- The pending hash is made to match the holders. An entry being given back goes, and its
-- slot with it unless the log has the user (a rewound copy may hold an old admission's flag
-- while the user's later admission is in PostgreSQL): its event is in no log, so its unit is
-- for sale again. An entry of a user who is no holder goes too.
-- ARGV[1] the allocation (share, plus journalled to, minus journalled from), ARGV[2]
-- starts_at ms or '', ARGV[3] ends_at ms or '' (load_meta.lua's first three), ARGV[4] the
-- stamp (recorded in PostgreSQL first), ARGV[5] the lease token, ARGV[6] the coupon's number
-- of buckets, ARGV[7] the last transfer journalled from this bucket ('' for none), ARGV[8]
-- its recipient, ARGV[9] its units, ARGV[10] the share ARGV[1] includes (PostgreSQL's, read
-- under the lease: a raise's grow is refused while the bucket is closed, and lands after),
-- ARGV[11] the operator settings' version and ARGV[12] '1' if paused, else '' (read with
-- the rest, before the stamp was recorded: written, with the end, unless the copy holds a
-- newer version, as load_meta.lua does; coupon-core/tests/settings_model.rs's
-- RestoreWithoutSettings), and ARGV[13...] the transfers journalled to this bucket. A raise's flag the copy has
-- stays: whoever set it clears it once every bucket has grown.
-- The outgoing entry comes back with no lease, so that a mover takes it over at once and
-- makes sure of its credit and settle (both safe to repeat). The mark is cleared under a new
-- generation: a check that collected before the rebuild cannot mark afterwards.
-- Returns 1 when restored; 0, writing nothing, when the instance is no longer the one the
-- stamp names or the lease is no longer held (the rebuild starts over).
if not stamped_here(ARGV[4]) or redis.call('GET', KEYS[5]) ~= ARGV[5] then
  redis.call('DEL', KEYS[7], KEYS[9])
  return 0
end
-- A new key, with no expiry (the staged keys have one, in case their rebuilder dies).
redis.call('SUNIONSTORE', KEYS[2], KEYS[7], KEYS[9])
local pending = redis.call('HGETALL', KEYS[8])
for i = 1, #pending, 2 do
  local user, entry = pending[i], pending[i + 1]
  -- The state is the entry's third field (ledger.lua's codec).
  local state = string.match(entry, '^%S+ %S+ (%a+) ')
  if state == 'releasing' then
    redis.call('HDEL', KEYS[8], user)
    if redis.call('SISMEMBER', KEYS[7], user) == 0 then
      redis.call('SREM', KEYS[2], user)
    end
  elseif redis.call('SISMEMBER', KEYS[2], user) == 0 then
    redis.call('HDEL', KEYS[8], user)
  end
end
redis.call('DEL', KEYS[7], KEYS[9])
redis.call('DEL', KEYS[4], KEYS[6])
for i = 13, #ARGV do
  redis.call('SADD', KEYS[4], ARGV[i])
end
redis.call('DEL', KEYS[3])
if ARGV[7] ~= '' then
  redis.call('HSET', KEYS[3], 'id', ARGV[7], 'to', ARGV[8], 'units', ARGV[9], 'owner', '',
    'lease_until', 0)
end
redis.call('HSET', KEYS[1], 'quantity', ARGV[1], 'buckets', ARGV[6], 'share', ARGV[10])
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], 'starts_at', ARGV[2])
else
  redis.call('HDEL', KEYS[1], 'starts_at')
end
-- At an equal version too, as settings.lua writes: a copy of one version that differs was
-- written before the settings were (by an older API's script).
if tonumber(ARGV[11]) >= tonumber(redis.call('HGET', KEYS[1], 'settings') or '-1') then
  write_settings(KEYS[1], ARGV[11], ARGV[12], ARGV[3], '0')
end
redis.call('HDEL', KEYS[1], 'sold_out', 'waiting_until')
redis.call('HINCRBY', KEYS[1], 'generation', 1)
redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('HSET', KEYS[1], 'epoch', ARGV[4])
return 1
