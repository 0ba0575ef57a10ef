ALTER TABLE coupons DROP COLUMN redis_stamp;
