-- Writes a coupon's operator settings into its meta: `paused` present only while paused
-- (admission.lua reads it), `ends_at` (ms, absent for no end), `settings` the version they
-- came from. The callers compare versions first (settings.lua, load_meta.lua).
-- An end moved later after it came reopens the sale: admission answers ENDED until
-- `opens_from` (Redis's clock, ms), `hold_ms` from now, without shutting a finished gate,
-- so that every API's gate shut on ENDED before has run out by then (stock_hold.lua does
-- the same for stock; coupon-core/tests/finished_gate_model.rs). '0' holds nothing: a
-- rebuild's load, which opens that long after it closed the coupon anyway.
local function write_settings(meta, version, paused, ends_at, hold_ms)
  if paused == '1' then
    redis.call('HSET', meta, 'paused', '1')
  else
    redis.call('HDEL', meta, 'paused')
  end
  local was = redis.call('HGET', meta, 'ends_at')
  if (was or '') ~= ends_at then
    local hold = tonumber(hold_ms)
    if was and hold > 0 then
      local t = redis.call('TIME')
      local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
      if now >= tonumber(was) and now + hold > tonumber(redis.call('HGET', meta, 'opens_from') or '0') then
        redis.call('HSET', meta, 'opens_from', now + hold)
      end
    end
    if ends_at == '' then
      redis.call('HDEL', meta, 'ends_at')
    else
      redis.call('HSET', meta, 'ends_at', ends_at)
    end
  end
  redis.call('HSET', meta, 'settings', version)
end
