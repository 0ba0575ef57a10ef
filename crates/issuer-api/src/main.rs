use std::time::Duration;

use coupon_core::{shutdown, telemetry};
use issuer_api::app::Application;
use issuer_api::commands;
use issuer_api::config::{Command, Config};
use tokio_util::sync::CancellationToken;

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    // Signal handlers before anything that can wait: a stop during start-up (a dependency
    // not answering yet) then ends the process at once, cleanly.
    let stop = CancellationToken::new();
    let signal = shutdown::signal();
    let on_signal = stop.clone();
    actix_web::rt::spawn(async move {
        signal.await;
        on_signal.cancel();
    });
    let config = Config::from_process()?;
    let telemetry = telemetry::init(&config.log, "issuer-api")?;
    tracing::info!("issuer-api starting");
    let outcome = match config.command.clone().unwrap_or(Command::Serve) {
        Command::Serve => {
            tokio::select! {
                built = Application::build(config) => built?.run(stop.cancelled_owned()).await,
                () = stop.cancelled() => {
                    tracing::info!("stopped during start-up");
                    Ok(())
                }
            }
        }
        Command::RebuildRedis { coupon, all } => tokio::select! {
            done = commands::rebuild_redis(&config, coupon, all) => done,
            () = stop.cancelled() => Err(anyhow::anyhow!("interrupted")),
        },
        // Not interrupted half-way: what it closed would stay closed for the whole lease.
        Command::HandOver {
            coupon,
            to,
            wait_secs,
            lease_secs,
        } => commands::hand_over(
            &config,
            coupon
                .zip(to)
                .map(|(coupon, to)| commands::SlotMove { coupon, to }),
            Duration::from_secs(wait_secs),
            Duration::from_secs(lease_secs),
        )
        .await
        .map(drop),
    };
    telemetry.shutdown();
    outcome
}
