use coupon_core::{shutdown, telemetry};
use issuer_api::app::{self, Application};
use issuer_api::config::{Command, Config};

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_process()?;
    let telemetry = telemetry::init(&config.log, "issuer-api")?;
    let outcome = match config.command.clone().unwrap_or(Command::Serve) {
        Command::Serve => {
            Application::build(config)
                .await?
                .run(shutdown::signal())
                .await
        }
        Command::RebuildRedis { coupon, all } => app::rebuild_redis(&config, coupon, all).await,
    };
    telemetry.shutdown();
    outcome
}
