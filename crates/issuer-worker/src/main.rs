use clap::Parser;
use coupon_core::{shutdown, telemetry};
use issuer_worker::config::{Command, Config};
use issuer_worker::dlq_commands;
use issuer_worker::worker::Worker;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let telemetry = telemetry::init(&config.log, "issuer-worker")?;
    let outcome = match &config.command {
        Some(Command::Dlq(command)) => dlq_commands::run(&config, command).await,
        None | Some(Command::Run) => {
            let stop = shutdown::signal();
            let token = CancellationToken::new();
            let on_signal = token.clone();
            tokio::spawn(async move {
                stop.await;
                on_signal.cancel();
            });
            let worker = Worker::build(config).await?;
            worker.run(token).await
        }
    };
    telemetry.shutdown();
    outcome
}
