-- Settling acknowledged events, many at once (Kafka mode): each entry goes if it is still
-- the one for that event, whoever published it. An entry for another event (a later
-- admission of the same user after a release) is left alone.
-- KEYS: pending hashes, one per coupon (per bucket). Several only on a single Redis, where
-- one run may span slots: a run costs Redis a few microseconds of its own, so the settles
-- of every coupon share it. A Redis Cluster refuses a run across slots: one key there.
-- ARGV[1..#KEYS]: how many (user id, event id) pairs each key has; then the pairs, the first
-- key's first.
-- An entry starts with its event id (PendingEntry's codec, coupon-core/src/ledger.rs).
-- Returns how many entries went.
-- Two calls per key and per thousand pairs: one read of every entry named, one delete of
-- those still their event's (a call costs Redis more than the work each entry adds to it;
-- the thousand keeps `unpack` within Lua's stack).
local CHUNK = 1000
local settled = 0
local at = #KEYS + 1
for k = 1, #KEYS do
  local left = tonumber(ARGV[k])
  while left > 0 do
    local count = math.min(left, CHUNK)
    local users, events = {}, {}
    for i = 1, count do
      users[i], events[i] = ARGV[at], ARGV[at + 1]
      at = at + 2
    end
    left = left - count
    local entries = redis.call('HMGET', KEYS[k], unpack(users))
    local gone = {}
    for i = 1, count do
      local entry, event = entries[i], events[i]
      -- The entry's first word is the event's id: found at the start, with a space after.
      if entry and string.find(entry, event, 1, true) == 1
          and string.byte(entry, #event + 1) == 32 then
        gone[#gone + 1] = users[i]
      end
    end
    if #gone > 0 then
      settled = settled + redis.call('HDEL', KEYS[k], unpack(gone))
    end
  end
end
return settled
