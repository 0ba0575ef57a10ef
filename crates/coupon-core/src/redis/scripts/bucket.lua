-- One step of moving stock between a bucketed coupon's buckets, or of its sold-out check,
-- on one bucket (coupon-core/src/redis/buckets.rs says when each runs; the protocol is
-- checked in coupon-core/tests/bucket_model.rs).
-- KEYS[1] the bucket's meta hash, KEYS[2] its issued set, KEYS[3] its outgoing transfer (a
-- hash: id, to, units, owner, lease_until), KEYS[4] the set of transfer ids credited to it,
-- KEYS[5] the users whose slot is being given back (ledger.lua's release), KEYS[6] its
-- pending hash (all with the bucket's hash tag).
-- ARGV[1] the step, ARGV[2] the bucket's stamp in force (epoch.lua), then the step's own.
-- The meta's `quantity` is the bucket's allocation: its share, plus what was credited to it,
-- minus what was taken from it. Its stock is the allocation minus its holders. Its `share` is
-- the share the allocation includes (PostgreSQL's, which a raise of the quantity moves up),
-- and `raising`, while a raise lands, the highest quantity raised to: no mark is set on any
-- bucket while one of them has it. `version` moves with every step that changes stock or
-- transfers but an admission, which moves the issued set's size instead: a collect reads
-- both, so that two collects that read the same saw a bucket nothing happened to in between.
-- Returns {code, ...}: 0 meta not loaded, 7 stamp not in force (the caller rebuilds or learns
-- the stamp, as for admission), else the step's codes below.
local meta = redis.call('HMGET', KEYS[1], 'quantity', 'epoch', 'waiting_until', 'version',
  'generation', 'sold_out', 'raising', 'share')
if not meta[1] then
  return {0}
end
if meta[2] ~= ARGV[2] or not stamped_here(meta[2]) then
  return {7}
end
local step = ARGV[1]
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function moved()
  redis.call('HINCRBY', KEYS[1], 'version', 1)
end

if step == 'take' then
  -- ARGV[3] transfer id, ARGV[4] recipient bucket, ARGV[5] units wanted, ARGV[6] the mover's
  -- owner token, ARGV[7] its lease in ms.
  -- {1, units} taken; {9} a transfer out of here is in flight (one at a time); {10} nothing
  -- to give: no stock, or requests wait here for it (else two buckets with waiting users
  -- pass stock back and forth for ever, a livelock the model found).
  if redis.call('EXISTS', KEYS[3]) == 1 then
    return {9}
  end
  local now = now_ms()
  if meta[3] and now < tonumber(meta[3]) then
    return {10}
  end
  local stock = tonumber(meta[1]) - redis.call('SCARD', KEYS[2])
  if stock <= 0 then
    return {10}
  end
  local units = math.min(stock, tonumber(ARGV[5]))
  redis.call('HINCRBY', KEYS[1], 'quantity', -units)
  redis.call('HSET', KEYS[3], 'id', ARGV[3], 'to', ARGV[4], 'units', units,
    'owner', ARGV[6], 'lease_until', now + tonumber(ARGV[7]))
  moved()
  return {1, units}
elseif step == 'recover' then
  -- ARGV[3] the mover's owner token, ARGV[4] its lease in ms. Takes over the transfer out
  -- of here once its lease has run out (its mover died or stalled): {1, id, to, units};
  -- {9} its lease still runs; {11} no transfer out of here.
  local entry = redis.call('HMGET', KEYS[3], 'id', 'to', 'units', 'lease_until')
  if not entry[1] then
    return {11}
  end
  local now = now_ms()
  if now < tonumber(entry[4]) then
    return {9}
  end
  redis.call('HSET', KEYS[3], 'owner', ARGV[3], 'lease_until', now + tonumber(ARGV[4]))
  return {1, entry[1], tonumber(entry[2]), tonumber(entry[3])}
elseif step == 'credit' then
  -- ARGV[3] transfer id, ARGV[4] units, ARGV[5] how long a wait stays registered (ms),
  -- ARGV[6] the renewal window (ms): {1} credited; {2} credited before (safe to repeat).
  if redis.call('SISMEMBER', KEYS[4], ARGV[3]) == 1 then
    return {2}
  end
  redis.call('HINCRBY', KEYS[1], 'quantity', tonumber(ARGV[4]))
  redis.call('SADD', KEYS[4], ARGV[3])
  -- The requests waiting here registered before the move began, and their registration may
  -- have lapsed while it ran (a slow PostgreSQL): renewed, so that no other bucket's mover
  -- takes the units away before they are taken.
  -- Not a registration older than a move: no request is behind it, and renewing it would
  -- keep this bucket's stock from the others.
  local now = now_ms()
  if meta[3] and now < tonumber(meta[3]) + tonumber(ARGV[6]) then
    redis.call('HSET', KEYS[1], 'waiting_until', now + tonumber(ARGV[5]))
  end
  moved()
  return {1}
elseif step == 'settle' then
  -- ARGV[3] transfer id: {1} the entry removed; {2} the entry is another transfer's, or
  -- gone (a stalled mover's late settle must not remove a later transfer's entry).
  if redis.call('HGET', KEYS[3], 'id') ~= ARGV[3] then
    return {2}
  end
  redis.call('DEL', KEYS[3])
  moved()
  return {1}
elseif step == 'collect' then
  -- {1, stock, transfer out in flight (1/0), version, issued, generation, marked (1/0),
  -- slots being given back, a raise landing (1/0)}.
  local issued = redis.call('SCARD', KEYS[2])
  return {1, tonumber(meta[1]) - issued, redis.call('EXISTS', KEYS[3]),
    tonumber(meta[4] or '0'), issued, tonumber(meta[5] or '0'), meta[6] and 1 or 0,
    redis.call('SCARD', KEYS[5]), meta[7] and 1 or 0}
elseif step == 'restock' then
  -- Frees the slots being given back, their units back into stock: run only once every
  -- bucket's mark is cleared (the mover's reopen), so no SOLD_OUT is answered after.
  -- {1, units}.
  -- A user whose entry is no longer the one being given back (a rebuild dropped it, and
  -- the user was admitted again since) is only unflagged: that slot is a live admission.
  local users = redis.call('SMEMBERS', KEYS[5])
  local freed = 0
  for _, user in ipairs(users) do
    local entry = redis.call('HGET', KEYS[6], user)
    if entry and string.match(entry, '^%S+ %S+ (%a+) ') == 'releasing' then
      redis.call('HDEL', KEYS[6], user)
      redis.call('SREM', KEYS[2], user)
      freed = freed + 1
    end
  end
  redis.call('DEL', KEYS[5])
  if #users > 0 then
    moved()
  end
  return {1, freed}
elseif step == 'mark' then
  -- ARGV[3] the generation the check's collect saw: {1} marked sold out; {2} the mark was
  -- cleared since (a reopen, a rebuild), so what the check saw may no longer hold.
  if tonumber(meta[5] or '0') ~= tonumber(ARGV[3]) then
    return {2}
  end
  -- Never the case after a valid check (every step that makes stock moves the generation
  -- first, or is a transfer the check saw in flight); refused all the same, as a defence
  -- against a path that frees a slot outside this protocol.
  if tonumber(meta[1]) > redis.call('SCARD', KEYS[2]) or redis.call('EXISTS', KEYS[3]) == 1
      or redis.call('EXISTS', KEYS[5]) == 1 or meta[7] then
    return {2}
  end
  redis.call('HSET', KEYS[1], 'sold_out', '1')
  return {1}
elseif step == 'unmark' then
  -- Clears the mark under a new generation: {1}. Another bucket's rebuild may give back a
  -- unit a failover took from an admission whose publish failed, and that unit is for sale
  -- again; a check that collected before cannot mark under the old generation afterwards.
  redis.call('HDEL', KEYS[1], 'sold_out')
  redis.call('HINCRBY', KEYS[1], 'generation', 1)
  moved()
  return {1}
elseif step == 'flag' then
  -- ARGV[3] the quantity a raise lands: the flag holds the highest such, the mark goes under
  -- a new generation (a check that collected before cannot mark after). {1}.
  if not meta[7] or tonumber(meta[7]) < tonumber(ARGV[3]) then
    redis.call('HSET', KEYS[1], 'raising', ARGV[3])
  end
  redis.call('HDEL', KEYS[1], 'sold_out')
  redis.call('HINCRBY', KEYS[1], 'generation', 1)
  moved()
  return {1}
elseif step == 'grow' then
  -- ARGV[3] the bucket's share as PostgreSQL has it now: the allocation gains what its share
  -- lacks, once (a grow repeated, or one older than a later one, adds nothing). ARGV[4] the
  -- share it holds if it records none: loaded by a version that did not record shares, it
  -- has had no raise land in it, so it holds its share of the quantity last landed. Such a
  -- bucket records its share even when it gains nothing: once the raise lands, the quantity
  -- last landed is no longer the one it was created with. {1, units}.
  local held = tonumber(meta[8] or ARGV[4])
  local more = tonumber(ARGV[3]) - held
  if more <= 0 then
    if not meta[8] then
      redis.call('HSET', KEYS[1], 'share', held)
    end
    return {1, 0}
  end
  redis.call('HINCRBY', KEYS[1], 'quantity', more)
  redis.call('HSET', KEYS[1], 'share', ARGV[3])
  moved()
  return {1, more}
elseif step == 'clear' then
  -- ARGV[3] the quantity every bucket has grown to: the flag goes if it names no more (a
  -- raise to more is still landing). {1} cleared or none; {2} kept.
  if meta[7] and tonumber(meta[7]) > tonumber(ARGV[3]) then
    return {2}
  end
  redis.call('HDEL', KEYS[1], 'raising')
  return {1}
end
return redis.error_reply('unknown bucket step ' .. tostring(step))
