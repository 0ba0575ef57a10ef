-- Whether a coupon needs no more work from the hot loops (the reconciler, the stream
-- workers): admission can no longer take a slot, and every slot taken is settled.
-- KEYS[1] meta hash, KEYS[2] issued set, KEYS[3] pending hash, and in the Redis queue mode
-- KEYS[4] the coupon's stream. ARGV[1] the workers' group (Redis queue mode).
--
-- Final for admission: ended (on Redis's clock), or sold out. Sold out stays sold out once
-- nothing is pending, since only a pending slot can be given back. A missing meta is not
-- final: admission is closed only until a rebuild reopens it; nor is a state verified under
-- another Redis instance (epoch.lua), which may be a rewound copy.
-- Settled: Kafka mode, nothing pending (every event acknowledged by the broker, and the
-- broker redelivers until the workers commit). Redis queue mode, the group has read every
-- entry and holds none unacknowledged.
-- Returns 1 when finished, else 0.
local meta = redis.call('HMGET', KEYS[1], 'quantity', 'ends_at', 'epoch')
if not meta[1] or not stamped_here(meta[3]) then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ended = meta[2] and now >= tonumber(meta[2])
local sold_out = redis.call('SCARD', KEYS[2]) >= tonumber(meta[1])
if not (ended or sold_out) then
  return 0
end
if redis.call('HLEN', KEYS[3]) > 0 then
  return 0
end
if KEYS[4] and redis.call('EXISTS', KEYS[4]) == 1 then
  local last = nil
  local info = redis.call('XINFO', 'STREAM', KEYS[4])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      last = info[i + 1]
    end
  end
  for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[4])) do
    local fields = {}
    for i = 1, #group, 2 do
      fields[group[i]] = group[i + 1]
    end
    if fields['name'] == ARGV[1] then
      if fields['pending'] == 0 and fields['last-delivered-id'] == last then
        return 1
      end
      return 0
    end
  end
  -- Entries and no group yet: nobody has read them.
  return 0
end
return 1
