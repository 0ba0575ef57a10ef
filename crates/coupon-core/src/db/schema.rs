//! Diesel's view of the tables that `migrations/` creates (the migrations are the source).

diesel::table! {
    coupons (id) {
        id -> Int8,
        name -> Text,
        total_quantity -> Int8,
        persisted_count -> Int8,
        starts_at -> Nullable<Timestamptz>,
        ends_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        redis_stamp -> Nullable<Text>,
        buckets -> Int2,
        landed_quantity -> Nullable<Int8>,
        paused -> Bool,
        settings_version -> Int8,
        landed_settings -> Int8,
    }
}

diesel::table! {
    coupon_buckets (coupon_id, bucket) {
        coupon_id -> Int8,
        bucket -> Int2,
        tag -> Text,
        share -> Int8,
        redis_stamp -> Nullable<Text>,
        landed_settings -> Int8,
    }
}

diesel::table! {
    bucket_transfers (coupon_id, transfer_id) {
        seq -> Int8,
        coupon_id -> Int8,
        transfer_id -> Uuid,
        from_bucket -> Int2,
        to_bucket -> Int2,
        units -> Int8,
        journalled_at -> Timestamptz,
    }
}

diesel::table! {
    coupon_issues (coupon_id, user_id) {
        coupon_id -> Int8,
        user_id -> Int8,
        event_id -> Uuid,
        issued_at -> Timestamptz,
        persisted_at -> Timestamptz,
    }
}

diesel::table! {
    failed_events (id) {
        id -> Int8,
        reason -> Text,
        detail -> Text,
        source -> Text,
        coupon_id -> Nullable<Int8>,
        user_id -> Nullable<Int8>,
        payload -> Bytea,
        status -> Text,
        attempts -> Int4,
        next_retry_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        resolved_by -> Nullable<Text>,
    }
}

diesel::joinable!(coupon_issues -> coupons (coupon_id));
diesel::joinable!(coupon_buckets -> coupons (coupon_id));
diesel::allow_tables_to_appear_in_same_query!(
    coupons,
    coupon_issues,
    failed_events,
    coupon_buckets,
    bucket_transfers
);
