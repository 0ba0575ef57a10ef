use clap::Parser;
use coupon_core::{shutdown, telemetry};
use issuer_worker::config::Config;
use issuer_worker::worker::Worker;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    telemetry::init(&config.log);
    let worker = Worker::build(config).await?;
    let token = CancellationToken::new();
    let on_signal = token.clone();
    tokio::spawn(async move {
        shutdown::signal().await;
        on_signal.cancel();
    });
    worker.run(token).await
}
