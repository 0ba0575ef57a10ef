-- A coupon's quantity may be raised during its sale (the operators' action). PostgreSQL is
-- raised first, the quantity and each bucket's share in one transaction, so the workers'
-- quantity guard is never below what Redis admits; Redis is raised after, by the API that
-- raised PostgreSQL or, if it died, by any API's lander (coupon-core's raise.rs).
-- landed_quantity is the quantity Redis is known to hold: NULL for a coupon never raised, and
-- below total_quantity while a raise has not landed yet.
ALTER TABLE coupons ADD COLUMN landed_quantity BIGINT;

-- The landers' query, every second on every API: only the few coupons with a raise landing.
CREATE INDEX coupons_raise_landing ON coupons (id) WHERE landed_quantity < total_quantity;

-- A bucket's share is its part of the coupon's quantity: its stock at creation, moved up by
-- every raise (a raise splits its units over the buckets as a creation does).
COMMENT ON COLUMN coupon_buckets.share IS
    'the bucket''s part of the coupon''s quantity: its stock at creation, plus its part of every raise';
