COMMENT ON COLUMN coupon_buckets.share IS NULL;
DROP INDEX coupons_raise_landing;
ALTER TABLE coupons DROP COLUMN landed_quantity;
