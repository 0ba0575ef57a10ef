-- The pending (write-ahead) ledger's transitions after admission, Kafka mode. One entry per
-- admitted, not yet acknowledged slot: user -> "<eventId> <issuedMs> <state> <sinceMs>
-- <attempt>" (coupon-core/src/ledger.rs is the Rust side of this codec).
--   inflight  the admitting request is publishing it (since = admission)
--   doubt     a publish ended without knowing whether the broker has it; nobody publishes
--   claimed   a retry or a reconciler took it to publish it again (since = the claim)
--   releasing a bucketed coupon's slot being given back (its publish certainly failed): it
--             stays a slot, and nobody publishes it, until a mover has cleared every
--             bucket's sold-out mark and puts the unit back (bucket.lua's restock)
-- Every transition compares the whole entry first (settle.lua compares the event id): an actor
-- acts only on the entry it owns, so a report that comes late finds it changed, and does
-- nothing. All ages are measured on Redis's clock, the one every replica shares.
--
-- KEYS[1] issued-user set, KEYS[2] pending hash, KEYS[3] meta hash, and for a bucket of a
-- bucketed coupon KEYS[4] its set of users whose slot is being given back. ARGV[1] user id,
-- ARGV[4] the finished gates' hold in ms (stock_hold.lua), ARGV[2] operation:
--   claim   ARGV[3] publish window ms. Takes the entry if it is in doubt, or inflight or
--           claimed for a full window (its publisher died). Returns {1, new entry},
--           {2, entry} while someone is publishing it or giving it back, {0, ''} if there
--           is no entry.
--   release ARGV[3] the entry. Its publish certainly never reached the log: entry and slot
--           go (the unit held for the gates' hold if none was left). Returns {1, ''} if released, {0, ''} if
--           the entry changed. In a bucket, the
--           slot is only flagged as being given back: freed at once, the unit would be for
--           sale while other buckets' marks answer SOLD_OUT (bucket_model.rs,
--           Bug::ReleaseIntoStock).
--   doubt   ARGV[3] the entry. Its publish ended in doubt: nobody owns it any more, anyone
--           may claim it. Returns {1, new entry} or {0, ''}.
-- Settling an acknowledged event is settle.lua's, many at a time.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local user, op, arg = ARGV[1], ARGV[2], ARGV[3]
local entry = redis.call('HGET', KEYS[2], user)
if not entry then
  return {0, ''}
end
local _, _, id, issued, state, since, attempt =
  string.find(entry, '^(%S+) (%d+) (%a+) (%d+) (%d+)$')
if not id then
  return redis.error_reply('unreadable pending entry for user ' .. user .. ': ' .. entry)
end

local function put(new_state, new_attempt)
  local new = id .. ' ' .. issued .. ' ' .. new_state .. ' ' .. now .. ' ' .. new_attempt
  redis.call('HSET', KEYS[2], user, new)
  return new
end

if op == 'claim' then
  if state == 'releasing' then
    return {2, entry}
  end
  if state == 'doubt' or now - tonumber(since) >= tonumber(arg) then
    return {1, put('claimed', tonumber(attempt) + 1)}
  end
  return {2, entry}
elseif op == 'release' then
  if entry ~= arg then
    return {0, ''}
  end
  if KEYS[4] then
    put('releasing', attempt)
    redis.call('SADD', KEYS[4], user)
    return {1, ''}
  end
  hold_returned_stock(KEYS[3], KEYS[1], ARGV[4])
  redis.call('HDEL', KEYS[2], user)
  redis.call('SREM', KEYS[1], user)
  return {1, ''}
elseif op == 'doubt' then
  if entry ~= arg then
    return {0, ''}
  end
  return {1, put('doubt', attempt)}
end
return redis.error_reply('unknown ledger operation ' .. tostring(op))
