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
local settled = 0
local at = #KEYS + 1
for k = 1, #KEYS do
  for _ = 1, tonumber(ARGV[k]) do
    local user, event = ARGV[at], ARGV[at + 1]
    at = at + 2
    local entry = redis.call('HGET', KEYS[k], user)
    if entry and string.match(entry, '^(%S+) ') == event then
      redis.call('HDEL', KEYS[k], user)
      settled = settled + 1
    end
  end
end
return settled
