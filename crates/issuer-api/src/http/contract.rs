//! The HTTP contract: request and response bodies, camelCase JSON, and their validation.

use chrono::{DateTime, Datelike, Utc};
use coupon_core::buckets::BucketCount;
use coupon_core::db::coupons::NewCoupon;
use coupon_core::db::failed_events::{FailedEventRow, Filter, Status};
use coupon_core::db::redrive::Redriven;
use coupon_core::domain::{Admission, Coupon, CouponId, UserId};
use serde::de::value::MapAccessDeserializer;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;
use std::marker::PhantomData;

use crate::error::ApiError;
use crate::issuing::BucketStock;

const MAX_NAME_CHARS: usize = 200;
/// The years a sale's window may name. PostgreSQL itself takes 4713 BC to 294276 AD; a
/// window outside these is a client's mistake, and is refused before it reaches the database.
const YEARS: std::ops::RangeInclusive<i32> = 1970..=9999;
/// The largest quantity a coupon may have: JSON's largest exact integer (2^53 - 1), which
/// every step holds exactly, Lua's numbers in the scripts included (a bucket's grow passes
/// a difference of quantities to Redis as a Lua number, printed in exponent form past it).
pub const MAX_QUANTITY: i64 = (1 << 53) - 1;

/// A quantity as sent, checked against what every coupon may have.
fn quantity(sent: i64) -> Result<i64, ApiError> {
    if (1..=MAX_QUANTITY).contains(&sent) {
        Ok(sent)
    } else {
        Err(ApiError::InvalidRequest(format!(
            "totalQuantity must be an integer from 1 to {MAX_QUANTITY}"
        )))
    }
}

/// A quantity typed into a form (the console's): text that is no integer is answered as a
/// JSON body's integer out of range is, so both say the same.
pub fn quantity_from_text(raw: &str) -> Result<i64, ApiError> {
    raw.trim()
        .parse::<i64>()
        .map_or_else(|_| quantity(0), quantity)
}

/// A request body that must be a JSON object. serde's derive also reads a struct from an
/// array of its fields in order (`[1]` as `{"userId":1}`), which no client means. Read
/// straight from the object's entries: gathering them into a map of values first cost the
/// issue path an allocation per field and a second pass (a profile of the admitted path).
/// A field of the struct named twice is refused, where the map kept the last.
#[derive(Debug)]
pub struct Object<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Entries<T> {
            type Value = Object<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, entries: A) -> Result<Object<T>, A::Error> {
                T::deserialize(MapAccessDeserializer::new(entries)).map(Object)
            }
        }
        deserializer.deserialize_map(Entries(PhantomData))
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateCouponRequest {
    pub name: String,
    pub total_quantity: i64,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
    /// How many buckets the stock is split into (`coupon_core::buckets`); 1 unless given.
    pub buckets: Option<i64>,
}

/// The format characters that change how the text around them reads without showing
/// themselves: bidirectional overrides, embeddings and isolates (U+202E shows
/// `evil\u{202E}gpj.exe` as `evilexe.jpg`), and zero-width ones that make two names look
/// the same.
fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}' | '\u{FEFF}'
    )
}

impl CreateCouponRequest {
    pub fn validate(self) -> Result<NewCoupon, ApiError> {
        // Measured as sent, as the published schema's maxLength is: trimming first let
        // 201 characters through when one was leading white space.
        let name = self.name.trim();
        if name.is_empty() || self.name.chars().count() > MAX_NAME_CHARS {
            return Err(ApiError::InvalidRequest(format!(
                "name must be 1 to {MAX_NAME_CHARS} characters"
            )));
        }
        if name
            .chars()
            .any(|c| c.is_control() || is_invisible_format(c))
        {
            return Err(ApiError::InvalidRequest(
                "name must not contain control characters, bidirectional controls or \
                 invisible characters"
                    .into(),
            ));
        }
        for (field, at) in [("startsAt", self.starts_at), ("endsAt", self.ends_at)] {
            if let Some(at) = at
                && !YEARS.contains(&at.year())
            {
                return Err(ApiError::InvalidRequest(format!(
                    "{field} must be in the years {} to {}",
                    YEARS.start(),
                    YEARS.end()
                )));
            }
        }
        if let Some(ends) = self.ends_at
            && ends <= Utc::now()
        {
            return Err(ApiError::InvalidRequest(
                "endsAt is in the past: the coupon could never be issued".into(),
            ));
        }
        let total_quantity = quantity(self.total_quantity)?;
        if let (Some(starts), Some(ends)) = (self.starts_at, self.ends_at)
            && starts >= ends
        {
            return Err(ApiError::InvalidRequest(
                "startsAt must be before endsAt".into(),
            ));
        }
        let buckets = match self.buckets {
            None => BucketCount::ONE,
            Some(count) => BucketCount::for_quantity(count, total_quantity)
                .map_err(|invalid| ApiError::InvalidRequest(invalid.to_string()))?,
        };
        Ok(NewCoupon {
            name: name.to_owned(),
            total_quantity,
            starts_at: self.starts_at,
            ends_at: self.ends_at,
            buckets: buckets.get() as i16,
        })
    }
}

/// A raise of a coupon's quantity: the quantity it is to have (never below the current one;
/// the current one again lands a raise that did not land).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RaiseQuantityRequest {
    pub total_quantity: i64,
}

impl RaiseQuantityRequest {
    pub fn validate(self) -> Result<i64, ApiError> {
        quantity(self.total_quantity)
    }
}

/// Pausing or resuming a coupon's admission.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PauseRequest {
    pub paused: bool,
}

/// A pause's (or resume's) answer: `landed` when it is in force on every API now, else
/// PostgreSQL holds it and Redis will within a second of the coupon's state being open.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PauseChanged {
    pub coupon_id: CouponId,
    pub paused: bool,
    pub landed: bool,
}

/// Moving a sale's end later: `endsAt` a later time, or null for no end. Required: a body
/// without it is a mistake, not a wish to remove the end.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndRequest {
    #[serde(default, deserialize_with = "present")]
    pub ends_at: Option<Option<DateTime<Utc>>>,
}

/// A field that may be null, told apart from one not sent: `Some(None)` is null.
fn present<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<DateTime<Utc>>>, D::Error> {
    Option::<DateTime<Utc>>::deserialize(deserializer).map(Some)
}

impl EndRequest {
    pub fn validate(self) -> Result<Option<DateTime<Utc>>, ApiError> {
        let ends_at = self.ends_at.ok_or_else(|| {
            ApiError::InvalidRequest("endsAt is required: a later time, or null for no end".into())
        })?;
        if let Some(at) = ends_at
            && !YEARS.contains(&at.year())
        {
            return Err(ApiError::InvalidRequest(format!(
                "endsAt must be in the years {} to {}",
                YEARS.start(),
                YEARS.end()
            )));
        }
        Ok(ends_at)
    }
}

/// A moved end's answer: `landed` when it is in force on every API now, else PostgreSQL
/// holds it and Redis will within a second of the coupon's state being open.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndMoved {
    pub coupon_id: CouponId,
    pub ends_at: Option<DateTime<Utc>>,
    pub landed: bool,
}

/// A raise's answer: `landed` when admission sells the new quantity now, else PostgreSQL
/// holds it and Redis will within a second of the coupon's state being open.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QuantityRaised {
    pub coupon_id: CouponId,
    pub total_quantity: i64,
    pub landed: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CouponCreated {
    pub coupon_id: CouponId,
    pub name: String,
    pub total_quantity: i64,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
    pub buckets: BucketCount,
}

impl From<Coupon> for CouponCreated {
    fn from(c: Coupon) -> Self {
        Self {
            coupon_id: c.id,
            name: c.name,
            total_quantity: c.total_quantity,
            starts_at: c.starts_at,
            ends_at: c.ends_at,
            buckets: c.buckets,
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CouponView {
    pub coupon_id: CouponId,
    pub name: String,
    pub total_quantity: i64,
    /// Admitted in Redis.
    pub issued_count: i64,
    pub remaining: i64,
    /// Rows in PostgreSQL.
    pub persisted_count: i64,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
    pub buckets: BucketCount,
    /// An operator paused its admission (PostgreSQL's setting).
    pub paused: bool,
    /// A coupon in buckets: each one's stock, as its Redis state reads now.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bucket_stock: Vec<BucketStockView>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BucketStockView {
    pub bucket: u16,
    pub issued_count: i64,
    pub stock: i64,
    pub sold_out: bool,
}

impl From<&BucketStock> for BucketStockView {
    fn from(read: &BucketStock) -> Self {
        Self {
            bucket: read.bucket.index(),
            issued_count: read.issued,
            stock: read.stock,
            sold_out: read.sold_out,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IssueRequest {
    /// Optional: the user is the token's. If given, it must be that same user.
    pub user_id: Option<UserId>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IssueAnswer {
    pub result: Admission,
    pub coupon_id: CouponId,
    pub user_id: UserId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum IssueStatus {
    /// The row is in PostgreSQL.
    Issued,
    /// Admitted in Redis; the worker has not written the row yet.
    Pending,
    /// Admitted, but the database refused the event for good (`reason` says why, e.g.
    /// OVER_QUANTITY): final, no row will come unless an operator replays it.
    NotIssued,
    None,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IssueStatusView {
    pub coupon_id: CouponId,
    pub user_id: UserId,
    pub status: IssueStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<DateTime<Utc>>,
    /// Why a NOT_ISSUED event was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserCoupon {
    pub coupon_id: i64,
    pub issued_at: DateTime<Utc>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserCouponsView {
    pub user_id: UserId,
    pub coupons: Vec<UserCoupon>,
}

/// Ids in paths are parsed here rather than by the router, so that a bad one answers
/// the contract's 400 JSON body.
/// The query of the failed events' list: `status` one of theirs, `couponId` a coupon's,
/// `limit` 1 to 1,000.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FailedEventsQuery {
    pub status: Option<String>,
    pub coupon_id: Option<String>,
    pub limit: Option<i64>,
}

/// The most failed events one list answers with.
pub const MAX_FAILED_EVENTS: i64 = 1_000;

impl FailedEventsQuery {
    /// The list's query from the raw query string, checked: (which events, how many).
    pub fn parse(raw: &str) -> Result<(Filter, i64), ApiError> {
        let query = actix_web::web::Query::<FailedEventsQuery>::from_query(raw)
            .map_err(|err| ApiError::InvalidRequest(format!("the query: {err}")))?
            .into_inner();
        let status = match query.status {
            None => None,
            Some(name) => Some(Status::parse(&name).ok_or_else(|| {
                ApiError::InvalidRequest(format!(
                    "status must be one of {}",
                    Status::ALL.map(Status::as_str).join(", ")
                ))
            })?),
        };
        // `couponId=` names no coupon, so it is refused like any other bad id rather than
        // read as "every coupon" (the console's form has its own query and never sends it).
        let coupon = match query.coupon_id.as_deref() {
            None => None,
            Some(raw) => Some(path_id::<CouponId>(raw)?),
        };
        let limit = query.limit.unwrap_or(100);
        if !(1..=MAX_FAILED_EVENTS).contains(&limit) {
            return Err(ApiError::InvalidRequest(format!(
                "limit must be an integer from 1 to {MAX_FAILED_EVENTS}"
            )));
        }
        Ok((Filter { status, coupon }, limit))
    }
}

/// A failed event as an operator sees it (the payload stays in the database).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FailedEventView {
    pub id: i64,
    pub reason: String,
    pub detail: String,
    pub source: String,
    pub coupon_id: Option<i64>,
    pub user_id: Option<i64>,
    pub status: String,
    pub attempts: i32,
    pub next_retry_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub resolved_by: Option<String>,
}

impl From<FailedEventRow> for FailedEventView {
    fn from(row: FailedEventRow) -> Self {
        Self {
            id: row.id,
            reason: row.reason,
            detail: row.detail,
            source: row.source,
            coupon_id: row.coupon_id,
            user_id: row.user_id,
            status: row.status,
            attempts: row.attempts,
            next_retry_at: row.next_retry_at,
            created_at: row.created_at,
            updated_at: row.updated_at,
            resolved_by: row.resolved_by,
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FailedEventsView {
    pub failed_events: Vec<FailedEventView>,
}

/// What a replay did: RECOVERED (a row now), or ABANDONED with why.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FailedEventReplayed {
    pub id: i64,
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl FailedEventReplayed {
    pub fn new(id: i64, replayed: Redriven) -> Self {
        let (status, detail) = match replayed {
            Redriven::Recovered => (Status::Recovered, None),
            // An operator's replay is never rescheduled (`coupon_core::db::redrive`).
            Redriven::RetryAt(at) => (Status::Retrying, Some(format!("retried at {at}"))),
            Redriven::Abandoned(why) => (Status::Abandoned, Some(why)),
        };
        Self {
            id,
            status: status.as_str(),
            detail,
        }
    }
}

/// A failed event's id in a path: a positive integer.
pub fn failed_event_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::InvalidRequest("failedEventId must be a positive integer".into()))
}

pub fn path_id<T: std::str::FromStr<Err = coupon_core::domain::InvalidId>>(
    raw: &str,
) -> Result<T, ApiError> {
    raw.parse()
        .map_err(|e: coupon_core::domain::InvalidId| ApiError::InvalidRequest(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: &str) -> Result<NewCoupon, String> {
        serde_json::from_str::<CreateCouponRequest>(json)
            .map_err(|e| e.to_string())?
            .validate()
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_body_is_an_object_whose_fields_are_named_once() {
        let issue = |json: &str| serde_json::from_str::<Object<IssueRequest>>(json);
        assert_eq!(
            issue(r#"{"userId":7}"#).unwrap().0.user_id.map(UserId::get),
            Some(7)
        );
        assert!(issue("{}").unwrap().0.user_id.is_none());
        // Fields a client adds are ignored, as before.
        assert!(issue(r#"{"userId":7,"note":[1,{"a":2}]}"#).is_ok());
        for refused in ["[7]", "7", "null", r#""x""#, r#"{"userId":7,"userId":8}"#] {
            assert!(issue(refused).is_err(), "{refused} was read");
        }
    }

    #[test]
    fn coupon_requests_are_validated() {
        let ok = request(r#"{"name":" Flash ","totalQuantity":500}"#).unwrap();
        assert_eq!((ok.name.as_str(), ok.total_quantity), ("Flash", 500));
        assert!(request(r#"{"name":"","totalQuantity":5}"#).is_err());
        assert!(request(r#"{"name":"x","totalQuantity":0}"#).is_err());
        assert!(request(r#"{"name":"x","totalQuantity":1.5}"#).is_err());
        assert!(request(r#"{"name":"x"}"#).is_err());
        let backwards = r#"{"name":"x","totalQuantity":1,"startsAt":"2030-01-02T00:00:00Z","endsAt":"2030-01-01T00:00:00Z"}"#;
        assert_eq!(
            request(backwards).unwrap_err(),
            "startsAt must be before endsAt"
        );
        assert!(request(r#"{"name":"x","totalQuantity":1,"startsAt":"tomorrow"}"#).is_err());
    }

    #[test]
    fn buckets_are_one_unless_given_and_never_more_than_the_quantity() {
        assert_eq!(
            request(r#"{"name":"x","totalQuantity":5}"#)
                .unwrap()
                .buckets,
            1
        );
        let three = request(r#"{"name":"x","totalQuantity":5,"buckets":3}"#).unwrap();
        assert_eq!(three.buckets, 3);
        for (buckets, message) in [
            (0, "buckets must be between 1 and 16"),
            (17, "buckets must be between 1 and 16"),
            (6, "buckets must not exceed the quantity (5)"),
        ] {
            let json = format!(r#"{{"name":"x","totalQuantity":5,"buckets":{buckets}}}"#);
            assert_eq!(request(&json).unwrap_err(), message);
        }
    }

    /// The published schema bounds the name as sent; a name trimmed to 200 characters was
    /// once accepted from 201 (the contract fuzz found it with a leading U+0085).
    #[test]
    fn the_name_is_measured_as_sent() {
        let stars = "*".repeat(MAX_NAME_CHARS);
        for padded in [format!("\\u0085{stars}"), format!(" {stars}")] {
            let json = format!(r#"{{"name":"{padded}","totalQuantity":1}}"#);
            assert!(request(&json).is_err(), "{json} was accepted");
        }
        assert!(request(&format!(r#"{{"name":"{stars}","totalQuantity":1}}"#)).is_ok());
    }
}
