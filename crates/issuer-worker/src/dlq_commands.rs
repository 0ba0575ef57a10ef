//! `issuer-worker dlq list|replay`: what an operator runs to see and re-drive failed events.

use anyhow::{Context, bail};
use coupon_core::db::failed_events::{Filter, list, unrecovered_ids};
use coupon_core::db::redrive::{Redriven, replay};

use crate::config::{Config, DlqCommand};

/// Who a replay from this command is recorded as made by (`failed_events.resolved_by`).
const DLQ_OPERATOR: &str = "issuer-worker dlq replay";

pub async fn run(config: &Config, command: &DlqCommand) -> anyhow::Result<()> {
    let mut conn = config
        .database
        .target()?
        .connect()
        .await
        .context("cannot connect to PostgreSQL")?;
    match command {
        DlqCommand::List { status, limit } => {
            let filter = Filter {
                status: *status,
                coupon: None,
            };
            let rows = list(&mut conn, filter, *limit).await?;
            println!(
                "{:>6}  {:<9}  {:<16}  {:>8}  {:>8}  {:>3}  {:<20}  {:<36}  detail",
                "id", "status", "reason", "coupon", "user", "try", "next retry", "source"
            );
            for row in &rows {
                let or_dash = |v: Option<i64>| v.map_or("-".into(), |v| v.to_string());
                let next = row
                    .next_retry_at
                    .map_or("-".into(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string());
                println!(
                    "{:>6}  {:<9}  {:<16}  {:>8}  {:>8}  {:>3}  {:<20}  {:<36}  {}",
                    row.id,
                    row.status,
                    row.reason,
                    or_dash(row.coupon_id),
                    or_dash(row.user_id),
                    row.attempts,
                    next,
                    row.source,
                    row.detail
                );
            }
            println!("({} shown)", rows.len());
        }
        DlqCommand::Replay { id, all } => {
            let ids = match (id, all) {
                (Some(id), _) => vec![*id],
                (None, true) => unrecovered_ids(&mut conn).await?,
                (None, false) => bail!("name a failed event with --id N, or --all"),
            };
            let mut abandoned = 0;
            for id in ids {
                match replay(&mut conn, id, DLQ_OPERATOR).await? {
                    None => bail!("there is no failed event {id}"),
                    Some(Redriven::Recovered) => println!("{id}: RECOVERED"),
                    Some(Redriven::RetryAt(at)) => println!("{id}: RETRYING at {at}"),
                    Some(Redriven::Abandoned(why)) => {
                        abandoned += 1;
                        println!("{id}: ABANDONED: {why}");
                    }
                }
            }
            if abandoned > 0 {
                bail!("{abandoned} event(s) could not be replayed");
            }
        }
    }
    Ok(())
}
