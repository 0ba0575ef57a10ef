-- Settling acknowledged events of one coupon, many at once (Kafka mode): each entry goes if
-- it is still the one for that event, whoever published it. An entry for another event (a
-- later admission of the same user after a release) is left alone.
-- KEYS[1] the coupon's pending hash. ARGV: user id, event id, user id, event id, ...
-- An entry starts with its event id (PendingEntry's codec, coupon-core/src/ledger.rs).
-- Returns how many entries went.
local settled = 0
for i = 1, #ARGV, 2 do
  local entry = redis.call('HGET', KEYS[1], ARGV[i])
  if entry and string.match(entry, '^(%S+) ') == ARGV[i + 1] then
    redis.call('HDEL', KEYS[1], ARGV[i])
    settled = settled + 1
  end
end
return settled
