-- An operator pauses and resumes a coupon's admission (issue 27). PostgreSQL holds the
-- setting; every change moves settings_version, and Redis's meta takes a setting only from
-- a higher version (load_meta.lua, settings.lua). landed_settings is the version known to
-- be in Redis: a change records it under the stamp in force when it committed, and every
-- new stamp (a rebuild, a hand-over) sets it back to 0, so that the landers land the
-- setting again into the state that stamp names (coupon-core/tests/settings_model.rs).
ALTER TABLE coupons ADD COLUMN paused BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE coupons ADD COLUMN settings_version BIGINT NOT NULL DEFAULT 0;
ALTER TABLE coupons ADD COLUMN landed_settings BIGINT NOT NULL DEFAULT 0;
CREATE INDEX coupons_unlanded_settings ON coupons (id) WHERE landed_settings < settings_version;
