//! Redis's own accounting of a run, node by node: `INFO commandstats`, reset before the run
//! (`CONFIG RESETSTAT`) and read after, on the nodes named (a cluster's primaries, or one
//! node). It answers what a request costs Redis, and on a cluster how evenly the shards
//! share it: the busiest node's script calls and microseconds against the mean.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;

/// One node's counts: command → (calls, µs).
pub struct NodeStats {
    pub node: String,
    pub commands: BTreeMap<String, (u64, u64)>,
}

/// The commands that run a script or a function.
const SCRIPTS: [&str; 4] = ["fcall", "evalsha", "eval", "fcall_ro"];

impl NodeStats {
    /// Calls and µs of the scripts and functions.
    pub fn scripts(&self) -> (u64, u64) {
        SCRIPTS
            .iter()
            .filter_map(|name| self.commands.get(*name))
            .fold((0, 0), |(calls, usec), (c, u)| (calls + c, usec + u))
    }

    /// µs of every command.
    pub fn usec(&self) -> u64 {
        self.commands.values().map(|(_, usec)| usec).sum()
    }
}

async fn connect(node: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(5)));
    redis::Client::open(format!("redis://{node}"))?
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .with_context(|| format!("cannot reach Redis at {node}"))
}

/// Zeroes the counts of every node.
pub async fn reset(nodes: &[String]) -> anyhow::Result<()> {
    for node in nodes {
        let () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async(&mut connect(node).await?)
            .await?;
    }
    Ok(())
}

/// The counts of every node since its reset.
pub async fn read(nodes: &[String]) -> anyhow::Result<Vec<NodeStats>> {
    let mut all = Vec::new();
    for node in nodes {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut connect(node).await?)
            .await?;
        all.push(NodeStats {
            node: node.clone(),
            commands: parse(&info),
        });
    }
    Ok(all)
}

/// `cmdstat_fcall:calls=12,usec=345,usec_per_call=28.75,...` lines.
fn parse(info: &str) -> BTreeMap<String, (u64, u64)> {
    info.lines()
        .filter_map(|line| {
            let (name, fields) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |key: &str| {
                fields
                    .split(',')
                    .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
                    .and_then(|value| value.parse::<u64>().ok())
            };
            Some((name.to_owned(), (field("calls")?, field("usec")?)))
        })
        .collect()
}

/// The busiest node's share over the mean, of what `of` counts (1.0 is an even share).
pub fn spread(stats: &[NodeStats], of: impl Fn(&NodeStats) -> u64) -> f64 {
    let values: Vec<f64> = stats.iter().map(|node| of(node) as f64).collect();
    let mean = values.iter().sum::<f64>() / values.len().max(1) as f64;
    values.iter().copied().fold(0.0, f64::max) / mean.max(f64::MIN_POSITIVE)
}

/// Prints each node's share of `answered` requests, and the spread: the busiest node's
/// script calls and µs over the mean (1.0 is an even share).
pub fn print(stats: &[NodeStats], answered: u64) {
    println!(
        "{:<22} {:>12} {:>12} {:>10} {:>12} {:>14}",
        "node", "script calls", "script µs", "µs/call", "all µs", "µs/answered"
    );
    for node in stats {
        let (calls, usec) = node.scripts();
        println!(
            "{:<22} {:>12} {:>12} {:>10.2} {:>12} {:>14.2}",
            node.node,
            calls,
            usec,
            usec as f64 / calls.max(1) as f64,
            node.usec(),
            node.usec() as f64 / answered.max(1) as f64
        );
    }
    let total: u64 = stats.iter().map(NodeStats::usec).sum();
    println!(
        "spread (busiest / mean): script calls {:.2}x, script µs {:.2}x; Redis µs per answered request, all nodes: {:.2}",
        spread(stats, |node| node.scripts().0),
        spread(stats, |node| node.scripts().1),
        total as f64 / answered.max(1) as f64
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commandstats_lines_give_calls_and_microseconds() {
        let info = "# Commandstats\r\ncmdstat_fcall:calls=12,usec=345,usec_per_call=28.75,rejected_calls=0,failed_calls=0\r\ncmdstat_ping:calls=1,usec=0,usec_per_call=0.00,rejected_calls=0,failed_calls=0\r\n";
        let parsed = parse(info);
        assert_eq!(parsed.get("fcall"), Some(&(12, 345)));
        assert_eq!(parsed.get("ping"), Some(&(1, 0)));
        let node = NodeStats {
            node: "n".into(),
            commands: parsed,
        };
        assert_eq!(node.scripts(), (12, 345));
        assert_eq!(node.usec(), 345);
    }
}
