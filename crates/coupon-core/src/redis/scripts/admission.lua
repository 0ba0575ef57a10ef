-- First-come-first-served admission, decided atomically for one (coupon, user).
-- KEYS[1] coupon meta hash, KEYS[2] issued-user set, KEYS[3] pending hash, and in the
-- Redis queue mode KEYS[4] the coupon's event stream (all with the coupon's hash tag).
-- ARGV[1] user id, ARGV[2] event id for a new admission, ARGV[3] coupon id, ARGV[4] the
-- stamp in force as the caller knows it (epoch.lua), and in the Redis queue mode ARGV[5] the
-- request's W3C traceparent, or '' when it is not traced.
--
-- Kafka mode: a new admission is written ahead into the pending hash in the same step as the
-- SADD, so no slot can exist without a record of its event: if the API dies before
-- publishing, the entry outlives it and is published by someone else. The entry's format and
-- every later transition belong to the ledger (ledger.lua, coupon-core/src/ledger.rs).
-- Redis queue mode: the event itself is appended to the stream in the same step as the
-- SADD, so the slot and its event exist together or not at all; nothing is pending.
--
-- Returns {code, now_ms}; now_ms is Redis's clock (shared by every replica) when the script
-- read it (a SUCCESS, or a window to check), else 0.
--   0 meta not loaded (the caller rebuilds the coupon's state, then asks again)
--   1 SUCCESS  2 ALREADY_ISSUED  3 SOLD_OUT  4 NOT_STARTED  5 ENDED
--   6 PENDING: this user's slot is held but its event not yet acknowledged; the ledger says
--     who publishes it
--   7 UNVERIFIED: the state's stamp is not the one in force, or was made under another
--     Redis instance (epoch.lua): the caller learns the stamp in force, or rebuilds the
--     state, then asks again
--   8 DRY: a bucketed coupon (KEYS are then the user's home bucket's, buckets.rs) whose
--     home bucket has no stock left and no sold-out mark: stock may be left in another
--     bucket. The wait is registered (so this bucket gives none of what comes), and the
--     caller has stock moved here (bucket.lua), then asks again.
--   9 HELD: SOLD_OUT while stock that came back is held (stock_hold.lua): the caller
--     answers SOLD_OUT, but does not shut its finished gate on it.
--   10 PAUSED: an operator paused the coupon (settings.lua) and it would admit; a holder
--     is still told the truth about its slot, which a retry after a 503 needs.
--   11 ENDED while an end moved later after it came is held (write_settings.lua): the
--     caller answers ENDED, but does not shut its finished gate on it.
-- Each redis.call costs Redis about half a microsecond beyond its own work, and this runs
-- for every request, so it calls only what the answer needs. A new user's admission is
-- five calls: the meta, the clock, the count, the slot and the pending entry. Whether the
-- user holds a slot already is asked only where the answer depends on it: a refusal
-- (a holder is told about its slot instead), and the admission itself, whose SADD answers
-- it. The answers are the same as asking first (`every_state_gets_the_answer_of_its_priority`
-- in coupon-core's tests/admission_answers.rs).
local now = 0
local function clock()
  if now == 0 then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return now
end

-- 'buckets' and 'sold_out' are a bucketed coupon's (buckets.rs), 'sells_from' is set only
-- while stock that came back is held (stock_hold.lua), 'paused' only while an operator
-- paused the coupon, and 'opens_from' once an end was moved later after it came
-- (write_settings.lua), read in the same call: a second call only where they matter
-- would cost every SOLD_OUT answer another microsecond.
local meta = redis.call('HMGET', KEYS[1], 'quantity', 'starts_at', 'ends_at', 'epoch',
  'buckets', 'sold_out', 'sells_from', 'paused', 'opens_from')
if not meta[1] then
  return {0, now}
end
if meta[4] ~= ARGV[4] or not stamped_here(meta[4]) then
  return {7, now}
end

-- The refusal the state gives, if any, before asking about the user.
local refusal = nil
if meta[2] and clock() < tonumber(meta[2]) then
  refusal = 4
elseif meta[3] and clock() >= tonumber(meta[3]) then
  refusal = 5
elseif meta[9] and clock() < tonumber(meta[9]) then
  refusal = 11
elseif redis.call('SCARD', KEYS[2]) >= tonumber(meta[1]) then
  if not meta[5] or meta[6] then
    refusal = 3
  elseif meta[8] then
    -- A paused bucket would admit once stock came: PAUSED, and no stock moved for it.
    refusal = 10
  else
    refusal = 8
  end
elseif meta[8] then
  -- Paused only where it would admit: a sold-out or ended coupon is told so (and shuts
  -- the finished gates), a truth a pause does not change.
  refusal = 10
elseif meta[7] and clock() < tonumber(meta[7]) then
  refusal = 9
end

-- A holder is told about its slot, whatever the state: asked for a refusal, and answered
-- by the SADD of an admission. A pending entry exists only beside its slot (both taken
-- below, both released by ledger.lua), so only a holder can be pending.
local holds
if refusal then
  holds = redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1
else
  holds = redis.call('SADD', KEYS[2], ARGV[1]) == 0
end
if holds then
  if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then
    return {6, now}
  end
  return {2, now}
end
if refusal == 8 then
  -- Registered for WAIT_REGISTERED (coupon-core's redis/buckets.rs, whose test holds the
  -- two together); a waiting request asks again well within it, which registers it again.
  redis.call('HSET', KEYS[1], 'waiting_until', clock() + 100)
end
if refusal then
  return {refusal, now}
end
-- Formatted once as an integer: a number put in a string is otherwise formatted as a
-- float, which costs more than the whole HSET.
local issued = string.format('%d', clock())
if KEYS[4] and ARGV[5] == '' then
  -- Field names and order are IssueEvent::stream_fields.
  redis.call('XADD', KEYS[4], '*', 'v', '1', 'eventId', ARGV[2], 'couponId', ARGV[3],
    'userId', ARGV[1], 'issuedAt', issued)
elseif KEYS[4] then
  -- The same, and the trace context the worker continues (coupon_core::trace_context).
  redis.call('XADD', KEYS[4], '*', 'v', '1', 'eventId', ARGV[2], 'couponId', ARGV[3],
    'userId', ARGV[1], 'issuedAt', issued, 'traceparent', ARGV[5])
else
  -- PendingEntry::admitted: "<eventId> <issuedMs> inflight <sinceMs> <attempt>".
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[2] .. ' ' .. issued .. ' inflight ' .. issued .. ' 0')
end
return {1, now}
