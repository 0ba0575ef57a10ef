-- A coupon's stock split into buckets, each with a Redis hash tag of its own, so that one hot
-- coupon's admission spreads over several Redis Cluster shards (coupon-core's buckets.rs).
-- A coupon of one bucket (the default) has no rows in coupon_buckets: its state is under its
-- own id's tag, with its stamp in coupons.redis_stamp, exactly as before buckets.
ALTER TABLE coupons ADD COLUMN buckets SMALLINT NOT NULL DEFAULT 1
    CONSTRAINT coupons_buckets_in_range CHECK (buckets BETWEEN 1 AND 16);

-- One row per bucket of a coupon of several. The tag is chosen at creation so that the
-- buckets land on different primaries, and kept here so that every process builds the same
-- keys and no Redis loss can lose it. The share is the bucket's stock at creation; the stamp
-- is its Redis state's in force, as coupons.redis_stamp is a coupon's.
CREATE TABLE coupon_buckets (
    coupon_id BIGINT NOT NULL REFERENCES coupons (id),
    bucket SMALLINT NOT NULL CONSTRAINT coupon_buckets_bucket_in_range CHECK (bucket BETWEEN 0 AND 15),
    tag TEXT NOT NULL UNIQUE,
    share BIGINT NOT NULL CONSTRAINT coupon_buckets_share_positive CHECK (share > 0),
    redis_stamp TEXT,
    PRIMARY KEY (coupon_id, bucket)
);

-- The journal of stock moved between two buckets: written between the take on the donor and
-- the credit on the recipient, and only while the donor's stamp in force is the one the take
-- ran under. A bucket's rebuild reads it: its stock is its share, plus what was journalled to
-- it, minus what was journalled from it, minus its holders.
CREATE TABLE bucket_transfers (
    -- The journal's order: a bucket's rebuild takes the last transfer out of it as its entry
    -- again. A sequence, not the clock, which may step back.
    seq BIGSERIAL NOT NULL UNIQUE,
    coupon_id BIGINT NOT NULL,
    transfer_id UUID NOT NULL,
    from_bucket SMALLINT NOT NULL,
    to_bucket SMALLINT NOT NULL,
    units BIGINT NOT NULL CONSTRAINT bucket_transfers_units_positive CHECK (units > 0),
    journalled_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (coupon_id, transfer_id),
    FOREIGN KEY (coupon_id, from_bucket) REFERENCES coupon_buckets (coupon_id, bucket),
    FOREIGN KEY (coupon_id, to_bucket) REFERENCES coupon_buckets (coupon_id, bucket),
    CONSTRAINT bucket_transfers_between_two CHECK (from_bucket <> to_bucket)
);
