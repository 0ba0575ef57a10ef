-- The column counts rows in coupon_issues (the worker keeps it in the same transaction as
-- the inserts), while the API's `issuedCount` counts the users Redis admitted: one word for
-- two counts misled readers. It is the persisted count.
ALTER TABLE coupons RENAME COLUMN issued_count TO persisted_count;
ALTER TABLE coupons RENAME CONSTRAINT coupons_issued_within_quantity TO coupons_persisted_within_quantity;
