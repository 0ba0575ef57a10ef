-- Gives a slot back after its event certainly never reached Kafka.
-- KEYS[1] issued-user set, KEYS[2] pending hash. ARGV[1] user id, ARGV[2] the pending entry
-- this release is about.
-- Only that exact entry is released: if it changed meanwhile, someone else owns the slot's
-- fate now, and removing it could undo their acknowledged publish. Returns 1 if released.
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then
  return 0
end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[1], ARGV[1])
return 1
