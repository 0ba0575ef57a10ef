use clap::Parser;
use coupon_core::{shutdown, telemetry};
use issuer_api::app::Application;
use issuer_api::config::Config;

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    telemetry::init(&config.log);
    Application::build(config)
        .await?
        .run(shutdown::signal())
        .await
}
