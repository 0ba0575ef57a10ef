-- A bucketed coupon's operator settings (paused, the sale's end) land in every bucket's
-- meta, each under its own stamp (coupon-core/tests/settings_model.rs): landed_settings is
-- the version known to be in the bucket's meta under the stamp in force, set back to 0 by
-- every new stamp of the bucket, as coupons.landed_settings is for a coupon's own meta.
ALTER TABLE coupon_buckets ADD COLUMN landed_settings BIGINT NOT NULL DEFAULT 0;
