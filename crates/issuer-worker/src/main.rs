use coupon_core::{shutdown, telemetry};
use issuer_worker::config::{Command, Config};
use issuer_worker::dlq_commands;
use issuer_worker::worker::Worker;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Signal handlers before anything that can wait: a stop during start-up (a dependency
    // not answering yet) then ends the process at once, cleanly.
    let token = CancellationToken::new();
    let signal = shutdown::signal();
    let on_signal = token.clone();
    tokio::spawn(async move {
        signal.await;
        on_signal.cancel();
    });
    let config = Config::from_process()?;
    let telemetry = telemetry::init(&config.log, "issuer-worker")?;
    tracing::info!("issuer-worker starting");
    let outcome = match &config.command {
        Some(Command::Dlq(command)) => tokio::select! {
            done = dlq_commands::run(&config, command) => done,
            () = token.cancelled() => Err(anyhow::anyhow!("interrupted")),
        },
        None | Some(Command::Run) => {
            tokio::select! {
                built = Worker::build(config) => built?.run(token).await,
                () = token.cancelled() => {
                    tracing::info!("stopped during start-up");
                    Ok(())
                }
            }
        }
    };
    telemetry.shutdown();
    outcome
}
