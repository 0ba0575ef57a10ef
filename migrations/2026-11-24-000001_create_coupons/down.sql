DROP TABLE failed_events;
DROP TABLE coupon_issues;
DROP TABLE coupons;
