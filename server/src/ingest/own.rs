//! The server's own vantage, `server`: runs its assignment in-process with the probe's
//! scheduler and feeds the aggregator like any probe session (numbered observations,
//! heartbeats, run-now).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use vantage_probe::checks::CheckContext;
use vantage_probe::scheduler::{Output, Scheduler};
use vantage_proto::pb;
use vantage_proto::pb::server_message::Msg as Down;

use crate::aggregator::{Aggregator, ProbeCommand};
use crate::ingest::inventory::{self, Assignments, Inventory};

/// Run the own vantage until the aggregator stops.
pub async fn run(
    agg: Aggregator,
    ctx: CheckContext,
    inventory: Arc<Inventory>,
    name: String,
    region: String,
) {
    let (tx, mut rx) = mpsc::channel(64);
    let hello = pb::Hello {
        name: name.clone(),
        region: region.clone(),
        version: vantage_probe::VERSION.to_owned(),
        instance_id: uuid::Uuid::new_v4().to_string(),
        ..Default::default()
    };
    let Ok(attached) = agg.attach(hello, tx).await else {
        return;
    };
    let (mut follow, assignment) = Assignments::follow(inventory, &name, &region);
    if agg
        .send(ProbeCommand::Assigned {
            name: name.clone(),
            check_ids: inventory::check_ids(&assignment),
        })
        .await
        .is_err()
    {
        return;
    }
    let (out_tx, mut out_rx) = mpsc::channel(256);
    let mut scheduler = Scheduler::start(ctx.clone(), &assignment, out_tx.clone());
    let mut seq = attached.applied_seq;
    let mut heartbeat = tokio::time::interval(Duration::from_secs(5));
    loop {
        let cmd = tokio::select! {
            out = out_rx.recv() => match out {
                Some(Output::Observation(mut o)) => {
                    seq += 1;
                    o.seq = seq;
                    ProbeCommand::Ingest { name: name.clone(), session_id: attached.session_id, batch: agg.batch(vec![*o]), then: Vec::new() }
                }
                Some(Output::RunComplete(request_id)) => ProbeCommand::RunComplete { name: name.clone(), request_id },
                None => return,
            },
            msg = rx.recv() => match msg.map(|m| *m) {
                Some(Ok(pb::ServerMessage { msg: Some(Down::RunNow(r)) })) => {
                    scheduler.run_now(r.request_id);
                    // Heard at once: a force waits for a vantage that acknowledged its RunNow.
                    ProbeCommand::Heartbeat { name: name.clone(), session_id: attached.session_id, replay_dropped: 0 }
                }
                Some(_) => continue,
                None => return,
            },
            Some(a) = follow.changed() => {
                scheduler = Scheduler::start(ctx.clone(), &a, out_tx.clone());
                ProbeCommand::Assigned { name: name.clone(), check_ids: inventory::check_ids(&a) }
            }
            _ = heartbeat.tick() => ProbeCommand::Heartbeat { name: name.clone(), session_id: attached.session_id, replay_dropped: 0 },
        };
        if agg.send(cmd).await.is_err() {
            return;
        }
    }
}
