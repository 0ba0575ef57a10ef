//! Whatever bytes arrive as a request body or a path id, parsing and validation answer a
//! value or an error: never a panic. A coupon request that validates holds what PostgreSQL
//! can store (the checks that keep SQLSTATE class 22 from ever being reached).
#![no_main]

use coupon_core::domain::{CouponId, UserId};
use issuer_api::http::contract::{CreateCouponRequest, IssueRequest, Object, path_id};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Object(request)) = serde_json::from_slice::<Object<CreateCouponRequest>>(data)
        && let Ok(coupon) = request.validate()
    {
        let chars = coupon.name.chars().count();
        assert!((1..=200).contains(&chars), "name of {chars} characters");
        assert!(!coupon.name.chars().any(char::is_control));
        assert!(coupon.total_quantity > 0);
    }
    let _ = serde_json::from_slice::<Object<IssueRequest>>(data);
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(id) = path_id::<CouponId>(text) {
            assert!(id.get() > 0);
        }
        let _ = path_id::<UserId>(text);
    }
});
