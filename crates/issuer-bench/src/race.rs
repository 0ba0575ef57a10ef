//! The seed's "before Lua" experiment against Redis directly: many users at once through a
//! non-atomic check-then-add (SCARD, then SADD if there was room) versus the product's
//! admission script, same load, side by side. The naive path exists only here.

use coupon_core::buckets::BucketCount;
use coupon_core::domain::QueueKind;
use coupon_core::domain::{Coupon, CouponId, UserId};
use coupon_core::redis::admission::{AdmissionScripts, AdmitReply};
use futures_util::future::join_all;
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;

use crate::report::Report;

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RaceRow {
    pub path: &'static str,
    pub told_success: usize,
    pub in_set: i64,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RaceReport {
    pub users: u64,
    pub quantity: i64,
    pub trials: u32,
    pub naive: RaceRow,
    pub script: RaceRow,
}

/// Runs trials until the naive path admits a wrong number (or `max_trials`); the script
/// path runs the same load in every trial and must be exact each time.
pub async fn run(
    redis_url: &str,
    users: u64,
    quantity: i64,
    max_trials: u32,
) -> anyhow::Result<RaceReport> {
    let client = redis::Client::open(redis_url)?;
    let con = client.get_multiplexed_async_connection().await?;
    let mut trials = 0;
    loop {
        trials += 1;
        let prefix = format!("race-{}:", uuid::Uuid::new_v4().simple());
        let naive = naive(&con, &format!("{prefix}naive"), users, quantity).await?;
        let script = scripted(&con, &prefix, users, quantity).await?;
        let _: () = redis::cmd("DEL")
            .arg(format!("{prefix}naive"))
            .arg(
                AdmissionScripts::new(prefix.clone(), QueueKind::Kafka)
                    .keys(CouponId::new(1)?)
                    .meta,
            )
            .arg(
                AdmissionScripts::new(prefix.clone(), QueueKind::Kafka)
                    .keys(CouponId::new(1)?)
                    .issued,
            )
            .arg(
                AdmissionScripts::new(prefix.clone(), QueueKind::Kafka)
                    .keys(CouponId::new(1)?)
                    .pending,
            )
            .query_async(&mut con.clone())
            .await?;
        if script.in_set != quantity || script.told_success != quantity as usize {
            anyhow::bail!(
                "the admission script admitted {} (told {}) of {quantity}",
                script.in_set,
                script.told_success
            );
        }
        let naive_wrong = naive.in_set != quantity || naive.told_success != quantity as usize;
        if naive_wrong || trials >= max_trials {
            return Ok(RaceReport {
                users,
                quantity,
                trials,
                naive,
                script,
            });
        }
    }
}

async fn naive(
    con: &MultiplexedConnection,
    key: &str,
    users: u64,
    quantity: i64,
) -> anyhow::Result<RaceRow> {
    let answers = join_all((1..=users).map(|user| {
        let mut con = con.clone();
        async move {
            let taken: i64 = con.scard(key).await?;
            if taken >= quantity {
                return Ok::<_, redis::RedisError>(false);
            }
            // Between the check above and this add, everyone else checked too.
            let added: i64 = con.sadd(key, user).await?;
            Ok(added == 1)
        }
    }))
    .await;
    let told_success = answers
        .into_iter()
        .filter(|a| matches!(a, Ok(true)))
        .count();
    let in_set: i64 = con.clone().scard(key).await?;
    Ok(RaceRow {
        path: "naive SCARD then SADD",
        told_success,
        in_set,
    })
}

async fn scripted(
    con: &MultiplexedConnection,
    prefix: &str,
    users: u64,
    quantity: i64,
) -> anyhow::Result<RaceRow> {
    let scripts = AdmissionScripts::new(prefix.to_owned(), QueueKind::Kafka);
    let coupon = Coupon {
        id: CouponId::new(1)?,
        name: "race".into(),
        total_quantity: quantity,
        persisted_count: 0,
        starts_at: None,
        ends_at: None,
        buckets: BucketCount::ONE,
        settings: Default::default(),
    };
    scripts.load_meta(&mut con.clone(), &coupon).await?;
    let answers = join_all((1..=users).map(|user| {
        let (mut con, scripts) = (con.clone(), scripts.clone());
        async move {
            let user = UserId::new(user as i64).map_err(|e| anyhow::anyhow!(e))?;
            let reply = scripts.admit(&mut con, coupon.id, user).await?;
            Ok::<_, anyhow::Error>(matches!(reply, AdmitReply::Admitted(_)))
        }
    }))
    .await;
    let told_success = answers
        .into_iter()
        .filter(|a| matches!(a, Ok(true)))
        .count();
    let in_set = scripts.admitted_count(&mut con.clone(), coupon.id).await?;
    Ok(RaceRow {
        path: "admission script (one EVALSHA)",
        told_success,
        in_set,
    })
}

impl Report for RaceReport {
    fn name(&self) -> &'static str {
        "race"
    }

    fn markdown(&self) -> String {
        let mut out = format!(
            "Race: {} users at once on a coupon of {} (trial {} of the run)\n\n\
             | path | told SUCCESS | in the Redis set | exact? |\n|---|---:|---:|---|\n",
            self.users, self.quantity, self.trials
        );
        for row in [&self.naive, &self.script] {
            let exact = row.in_set == self.quantity && row.told_success == self.quantity as usize;
            out.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                row.path,
                row.told_success,
                row.in_set,
                if exact { "yes" } else { "NO" }
            ));
        }
        out.push_str("\nThe seed's \"before Lua\" runs: SUCCESS / rows 499 / 400 (Redis-only) and 495 / 495 (Redis + Kafka), for 500 coupons.\n");
        out
    }
}
