//! Finding 3 of the protocol review: the active-coupon registry is how the reconciler and
//! the stream workers find a coupon, and the meta is what opens admission. A coupon that
//! admits must be registered, whatever fails in between. The failure is forced at the exact
//! point: a connection that wraps the real one and refuses the registration command.

use coupon_core::admission::AdmissionScripts;
use coupon_core::config::QueueKind;
use coupon_core::domain::{Coupon, CouponId};
use coupon_core::redis_keys::CouponKeys;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{AsyncCommands, Cmd, Pipeline, RedisFuture, Value};

/// Passes every command to Redis except the ones writing the registry, which fail as a
/// dropped connection would.
struct RegistryWritesFail {
    inner: MultiplexedConnection,
    registry: String,
}

impl ConnectionLike for RegistryWritesFail {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let touches_registry = cmd
            .args_iter()
            .any(|arg| matches!(arg, redis::Arg::Simple(bytes) if bytes == self.registry.as_bytes()));
        Box::pin(async move {
            if touches_registry {
                return Err(redis::RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "connection lost before the registration",
                )));
            }
            self.inner.req_packed_command(cmd).await
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.inner.req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

async fn redis() -> MultiplexedConnection {
    redis::Client::open(
        std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
    )
    .unwrap()
    .get_multiplexed_async_connection()
    .await
    .unwrap()
}

fn coupon() -> Coupon {
    Coupon {
        id: CouponId::new(1).unwrap(),
        name: "registry test".into(),
        total_quantity: 10,
        issued_count: 0,
        starts_at: None,
        ends_at: None,
    }
}

#[tokio::test]
async fn a_coupon_is_never_open_for_admission_unregistered() {
    for queue in [QueueKind::Kafka, QueueKind::Redis] {
        let prefix = format!("test-{}:", uuid::Uuid::new_v4().simple());
        let scripts = AdmissionScripts::new(prefix.clone(), queue);
        let mut con = redis().await;
        let registry = CouponKeys::active_registry(&prefix);
        let mut failing = RegistryWritesFail {
            inner: con.clone(),
            registry: registry.clone(),
        };
        let coupon = coupon();
        let loaded = scripts.load_meta(&mut failing, &coupon).await;
        let open: bool = con.exists(scripts.keys(coupon.id).meta).await.unwrap();
        let registered: bool = con.exists(&registry).await.unwrap();
        assert!(
            !open || registered,
            "{queue}: admission is open (meta written, load_meta said {loaded:?}) but the \
             coupon is not registered: no reconciler or stream worker will ever look at it"
        );
        assert!(loaded.is_err(), "{queue}: the failed registration is reported");
    }
}
