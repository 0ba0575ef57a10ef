-- Writes a coupon's operator settings into its meta: `paused` present only while paused
-- (admission.lua reads it), `settings` the version they came from. The callers compare
-- versions first (settings.lua, load_meta.lua).
local function write_settings(meta, version, paused)
  if paused == '1' then
    redis.call('HSET', meta, 'paused', '1', 'settings', version)
  else
    redis.call('HDEL', meta, 'paused')
    redis.call('HSET', meta, 'settings', version)
  end
end
