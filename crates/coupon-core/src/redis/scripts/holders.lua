-- The users holding a slot in a coupon's state, for the API's finished gate (issuer-api's
-- issuing/finished_gate.rs), which answers a finished coupon's requests from memory and must
-- still tell a holder ALREADY_ISSUED. Writes nothing.
-- KEYS[1] meta hash, KEYS[2] issued-user set, KEYS[3] pending hash. ARGV[1] the stamp in
-- force as the caller knows it, ARGV[2] the most holders the caller keeps.
-- Returns {issued users, pending users}: a pending user (their event not acknowledged yet)
-- may still lose the slot, so the caller asks admission for them. Returns false when the
-- state is not the verified one (a rewound copy may lack holders) or holds more than
-- ARGV[2] users.
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch or epoch ~= ARGV[1] or not stamped_here(epoch) then
  return false
end
if redis.call('SCARD', KEYS[2]) > tonumber(ARGV[2]) then
  return false
end
return {redis.call('SMEMBERS', KEYS[2]), redis.call('HKEYS', KEYS[3])}
