//! The chaos run's users: each tries once for one coupon, and like a real client retries
//! after a 503 or a broken connection (on the other replica), until told the truth.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;

use crate::client::ApiClient;

/// The last answer one user got for one coupon.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub coupon: i64,
    pub user: i64,
    /// None when no definite answer came before the user gave up.
    pub status: Option<u16>,
    pub result: String,
    /// Whether a 503 or a broken connection came before the final answer.
    pub after_unknown: bool,
}

const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// When each 503 or broken connection came, over the whole run: what each fault cost.
pub type Unknowns = Rc<RefCell<Vec<Instant>>>;

/// Sends the attempts spread evenly over `span`, each retrying until `give_up` after its
/// start; `first_replica` picks where each attempt goes first. Each 503 or broken
/// connection is noted in `unknowns`.
pub async fn drive(
    apis: Rc<Vec<ApiClient>>,
    attempts: Vec<(i64, i64)>,
    span: Duration,
    give_up: Duration,
    first_replica: impl Fn(usize) -> usize,
    unknowns: Unknowns,
) -> Vec<Outcome> {
    let start = Instant::now();
    let count = attempts.len().max(1) as u32;
    let tasks = attempts.into_iter().enumerate().map(|(i, (coupon, user))| {
        let apis = apis.clone();
        let at = start + span * i as u32 / count;
        let first = first_replica(i);
        let unknowns = unknowns.clone();
        actix_rt::spawn(async move {
            actix_rt::time::sleep_until(at.into()).await;
            attempt(&apis, first, coupon, user, give_up, &unknowns).await
        })
    });
    join_all(tasks)
        .await
        .into_iter()
        .filter_map(Result::ok)
        .collect()
}

async fn attempt(
    apis: &[ApiClient],
    first: usize,
    coupon: i64,
    user: i64,
    give_up: Duration,
    unknowns: &Unknowns,
) -> Outcome {
    let deadline = Instant::now() + give_up;
    let mut after_unknown = false;
    for replica in (first..).map(|n| n % apis.len()) {
        match apis[replica].try_issue(coupon, user).await {
            Ok((status, result)) if status != 503 => {
                return Outcome {
                    coupon,
                    user,
                    status: Some(status),
                    result,
                    after_unknown,
                };
            }
            Ok(_) | Err(_) => {
                after_unknown = true;
                unknowns.borrow_mut().push(Instant::now());
            }
        }
        if Instant::now() >= deadline {
            break;
        }
        actix_rt::time::sleep(RETRY_PAUSE).await;
    }
    Outcome {
        coupon,
        user,
        status: None,
        result: "GAVE_UP".into(),
        after_unknown,
    }
}
