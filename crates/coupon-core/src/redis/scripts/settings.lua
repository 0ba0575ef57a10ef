-- Lands an operator's settings (paused or not, the sale's end) in a coupon's meta:
-- PostgreSQL committed them first, under a version every change moves (coupon-core's
-- db/settings.rs).
-- KEYS[1] the meta. ARGV[1] the version, ARGV[2] '1' if paused, else '', ARGV[3] the end
-- in ms, '' for none, ARGV[4] the finished gates' hold in ms (write_settings.lua), ARGV[5]
-- the stamp in force when the change was read from PostgreSQL ('' if none).
-- Written only over an older version (or the same one): a later change landed first is left, and so is a
-- meta a rebuild loaded from a newer read (load_meta.lua). Written into any meta, even one
-- closed for its rebuild or a copy on a node not verified, as a raise is (raise.lua); but
-- it is in force only where the meta is open under that stamp on this instance, and only
-- then may the change be recorded as landed: a rebuild records its stamp before it loads,
-- and a copy elsewhere (a replica promoted, an old primary failed back to) may open
-- without it (coupon-core/tests/settings_model.rs).
-- Returns 0 when there is no meta (its rebuild, reading PostgreSQL after the change, will
-- write it; the landers make sure), 1 when the meta holds this version or a newer one and
-- is open under the stamp, 2 when it holds it but is not (the landers record it later).
if not redis.call('HGET', KEYS[1], 'quantity') then
  return 0
end
-- At an equal version too: PostgreSQL's row of one version is one, so a meta that differs
-- was written by an older API's script, which knew no end (write_settings writes only
-- what differs, and holds a reopened sale as a newer version would).
if tonumber(ARGV[1]) >= tonumber(redis.call('HGET', KEYS[1], 'settings') or '-1') then
  write_settings(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
end
if ARGV[5] ~= '' and redis.call('HGET', KEYS[1], 'epoch') == ARGV[5] and stamped_here(ARGV[5]) then
  return 1
end
return 2
