-- Stock that comes back to a sold-out coupon (a slot given back, a raised quantity) is
-- sold only from the meta's `sells_from` on (Redis's clock, ms; admission.lua answers
-- SOLD_OUT until then, code 9): every API's finished gate shut on the coupon before
-- (issuer-api's issuing/finished_gate.rs) has run out by that time, so no gate tells a user
-- admitted on it SOLD_OUT, and a refusal while it is held shuts no gate. A coupon with stock
-- left holds nothing: no gate can be shut on it, and its refusals would be false
-- (coupon-core/tests/finished_gate_model.rs). A rebuild waits instead (issuing/rebuild.rs).
-- Called before the change that gives stock back; `hold_ms` is the gates' hold, '0' when
-- they are off.
local function hold_returned_stock(meta, issued, hold_ms)
  local hold = tonumber(hold_ms)
  if not hold or hold <= 0 then
    return
  end
  local quantity = redis.call('HGET', meta, 'quantity')
  if not quantity or redis.call('SCARD', issued) < tonumber(quantity) then
    return
  end
  local t = redis.call('TIME')
  local from = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + hold
  if from > tonumber(redis.call('HGET', meta, 'sells_from') or '0') then
    redis.call('HSET', meta, 'sells_from', from)
  end
end
