-- Lands an operator's settings (paused or not) in a coupon's meta: PostgreSQL committed
-- them first, under a version every change moves (coupon-core's db/settings.rs).
-- KEYS[1] the meta. ARGV[1] the version, ARGV[2] '1' if paused, else ''.
-- Written only over an older version: a later change landed first is left, and so is a
-- meta a rebuild loaded from a newer read (load_meta.lua). No stamp is checked, as for a
-- raise (raise.lua): any state may take settings PostgreSQL holds, and one that is closed
-- for its rebuild keeps them (coupon-core/tests/settings_model.rs).
-- Returns 1 when the meta holds this version or a newer one, 0 when there is no meta (its
-- rebuild, reading PostgreSQL after the change, will write it; the landers make sure).
if not redis.call('HGET', KEYS[1], 'quantity') then
  return 0
end
if tonumber(ARGV[1]) > tonumber(redis.call('HGET', KEYS[1], 'settings') or '-1') then
  write_settings(KEYS[1], ARGV[1], ARGV[2])
end
return 1
