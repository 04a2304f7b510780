//! The DERP check of one region (`docs/coder-health.md#derp`): every node concurrently — two fresh clients
//! exchange a packet through the relay, and a STUN binding — each node bounded by its own
//! deadline. One observation per node, carrying Coder's node report.

use std::time::Duration;

use vantage_derp::health::{NodeCheckOptions, check_node};
use vantage_derp::map::Region;
use vantage_proto::pb::observation::Result as ObsResult;
use vantage_proto::{convert, pb};

use super::CheckContext;

/// Default per-node deadline (each node its own, within the run's 30 s: `docs/behaviour.md#other-deliberate-choices`).
pub const NODE_TIMEOUT: Duration = Duration::from_secs(10);
/// The whole region's budget.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// The target key of a node's observation.
pub fn node_target(region_id: i64, node: &str) -> String {
    format!("derp/{region_id}/{node}")
}

/// Check every node of the region; `(target, result)` per node.
pub async fn check(ctx: &CheckContext, target: &pb::DerpRegionTarget) -> Vec<(String, ObsResult)> {
    let region: Region = match serde_json::from_str(&target.region_json) {
        Ok(r) => r,
        Err(e) => {
            return vec![(
                "derp".to_owned(),
                ObsResult::UnknownError(format!("the assigned DERP region is not valid JSON: {e}")),
            )];
        }
    };
    let mut opts = NodeCheckOptions {
        deadline: convert::from_duration(target.node_timeout.as_ref())
            .filter(|d| !d.is_zero())
            .unwrap_or(NODE_TIMEOUT),
        ..NodeCheckOptions::default()
    };
    opts.client.extra_ca_pem.clone_from(&ctx.extra_ca_pem);
    opts.client.force_websocket = target.force_websockets;
    let checks = region.nodes.iter().map(|node| {
        let (region, node, opts) = (region.clone(), node.clone(), opts.clone());
        async move {
            let outcome = check_node(&region, &node, &opts).await;
            (node, outcome)
        }
    });
    let region_json = serde_json::to_string(&region).unwrap_or_default();
    futures::future::join_all(checks)
        .await
        .into_iter()
        .map(|(node, out)| {
            let r = &out.report;
            let result = pb::DerpNodeResult {
                region_id: region.region_id,
                node_name: node.name.clone(),
                region_json: region_json.clone(),
                stun_only: node.stun_only,
                can_exchange_messages: r.can_exchange_messages,
                uses_websocket: r.uses_websocket,
                token_bucket_bytes_per_second: r.node_info.token_bucket_bytes_per_second,
                token_bucket_bytes_burst: r.node_info.token_bucket_bytes_burst,
                stun_enabled: r.stun.enabled,
                stun_can_stun: r.stun.can_stun,
                stun_error: r.stun.error.clone().unwrap_or_default(),
                stun_mapped_address: out.stun_mapped.map(|a| a.to_string()).unwrap_or_default(),
                error: r.error.clone().unwrap_or_default(),
                report_json: serde_json::to_string(r).unwrap_or_default(),
                ..Default::default()
            };
            (
                node_target(region.region_id, &node.name),
                ObsResult::DerpNode(Box::new(result)),
            )
        })
        .collect()
}
