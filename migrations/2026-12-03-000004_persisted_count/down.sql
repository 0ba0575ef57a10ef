ALTER TABLE coupons RENAME CONSTRAINT coupons_persisted_within_quantity TO coupons_issued_within_quantity;
ALTER TABLE coupons RENAME COLUMN persisted_count TO issued_count;
