ALTER TABLE coupon_buckets DROP COLUMN landed_settings;
