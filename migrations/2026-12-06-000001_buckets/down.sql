DROP TABLE bucket_transfers;
DROP TABLE coupon_buckets;
ALTER TABLE coupons DROP COLUMN buckets;
