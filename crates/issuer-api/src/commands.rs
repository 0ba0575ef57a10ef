//! The commands `issuer-api` runs besides serving (`issuer-api --help`): each builds what
//! it needs through the composition root (`crate::app::connect`), does one job and exits.

use coupon_core::db::coupons::all_coupon_ids;
use coupon_core::domain::CouponId;

use crate::app::connect;
use crate::config::Config;
use crate::issuing::Rebuilt;

/// `issuer-api rebuild-redis`: rebuilds one coupon or all, printing what happened to
/// each; fails if any could not be rebuilt.
pub async fn rebuild_redis(
    config: &Config,
    coupon: Option<CouponId>,
    all: bool,
) -> anyhow::Result<()> {
    let issuer = connect(config).await?;
    let coupons = match (coupon, all) {
        (Some(coupon), _) => vec![coupon],
        (None, true) => {
            let mut conn = config.database.pool()?.get().await?;
            let ids = all_coupon_ids(&mut conn).await?;
            ids.into_iter()
                .filter_map(|id| CouponId::new(id).ok())
                .collect()
        }
        (None, false) => anyhow::bail!("name a coupon with --coupon ID, or --all"),
    };
    for (coupon, rebuilt) in issuer.rebuild(&coupons).await? {
        match rebuilt {
            Rebuilt::Restored { holders } => {
                println!("coupon {coupon}: restored, {holders} holders")
            }
            Rebuilt::AlreadyRunning => {
                println!("coupon {coupon}: another process is rebuilding it")
            }
        }
    }
    Ok(())
}
