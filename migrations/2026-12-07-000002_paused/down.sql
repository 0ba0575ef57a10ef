DROP INDEX coupons_unlanded_settings;
ALTER TABLE coupons DROP COLUMN landed_settings;
ALTER TABLE coupons DROP COLUMN settings_version;
ALTER TABLE coupons DROP COLUMN paused;
