-- The stamp of the coupon's Redis state in force: the last verification of it (creation
-- or rebuild), as `<Redis run id>/<nonce>` (coupon-core's epoch.rs). Redis keeps it in the
-- coupon's meta; every API passes this one with each admission, so a Redis node whose meta
-- carries an older stamp (an old primary failed back to) admits nobody until rebuilt. Kept
-- here because it must outlive every Redis node and every API process. NULL until the
-- first verification.
ALTER TABLE coupons ADD COLUMN redis_stamp TEXT;
