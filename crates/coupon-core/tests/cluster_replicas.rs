//! On a Redis Cluster each confirmation waits for the replicas the cluster lists for its
//! shard with the most (`coupon_core::redis::replicas`): REDIS_MIN_REPLICAS is a floor, and
//! a floor above what the cluster has is refused at start, since no write could ever be
//! confirmed. Against the suite's shared cluster (`make test-cluster`: three primaries, a
//! replica each).

// A panic is the failure report wanted here.
#![allow(clippy::unwrap_used)]

use clap::Parser;
use coupon_core::config::{RedisArgs, ReplicaArgs};
use coupon_core::domain::QueueKind;
use coupon_core::redis::replicas::ReplicaSetupError;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    replicas: ReplicaArgs,
}

fn args(floor: u32) -> Args {
    let nodes = testkit::redis_cluster::shared_nodes();
    Args::try_parse_from([
        "test".to_owned(),
        format!("--redis-cluster-nodes={nodes}"),
        format!("--redis-min-replicas={floor}"),
    ])
    .unwrap()
}

#[tokio::test]
async fn a_floor_above_the_replicas_the_cluster_has_is_refused_at_start() {
    let above = args(2);
    let refused = above
        .replicas
        .required(&above.redis, QueueKind::Redis)
        .await;
    assert!(
        matches!(
            refused,
            Err(ReplicaSetupError::MoreThanKnown {
                floor: 2,
                known: 1,
                ..
            })
        ),
        "a floor of 2 on a cluster of one replica a shard: {:?}",
        refused.map(|required| required.map(|r| r.count())).err()
    );

    let taken = args(1);
    let required = taken
        .replicas
        .required(&taken.redis, QueueKind::Redis)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(required.count(), 1);
}
