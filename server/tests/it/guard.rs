//! Identity and bounds in the aggregator: a held name is refused until its holder is gone or
//! silent, the vantage cap, the sequence window, forget only of stale vantages, coalesced
//! force, and observations the server will not apply. Paused time throughout.

use std::time::Duration;

use tokio::sync::mpsc;
use vantage_proto::pb;
use vantage_proto::pb::observation::Result as ObsResult;
use vantage_proto::pb::server_message::Msg as Down;
use vantage_server::aggregator::{
    Aggregator, AggregatorConfig, AttachError, ForgetOutcome, Outgoing, ProbeCommand, SessionTx,
};

use super::{attach, config, hello, ingest, obs, vantage};

fn refusal(r: Result<vantage_server::aggregator::Attached, AttachError>) -> tonic::Status {
    match r {
        Err(AttachError::Refused(r)) => tonic::Status::from(r),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_live_name_is_refused_until_its_holder_is_gone_or_silent() {
    let agg = Aggregator::spawn(config(), vec![]).expect("aggregator");
    let (tx, mut holder_rx): (SessionTx, _) = mpsc::channel(16);
    agg.attach_from(hello("fra-1", "real", 0), tx, "10.1.2.3:4567".into())
        .await
        .unwrap();
    for _ in 0..50 {
        let (tx, _rx): (SessionTx, _) = mpsc::channel(16);
        let s = refusal(
            agg.attach_from(hello("fra-1", "real", 0), tx, "10.9.9.9:1".into())
                .await,
        );
        assert_eq!(s.code(), tonic::Code::AlreadyExists);
        assert!(
            s.message().contains("\"fra\"") && s.message().contains("10.1.2.3:4567"),
            "names the holder's region and peer: {}",
            s.message()
        );
    }
    assert_eq!(agg.stats().guard.refused_held, 50);
    // The holder was never evicted.
    assert!(holder_rx.try_recv().is_err(), "the holder got nothing");
    // Silent for longer than holder_silence (7 s here): a new session takes the name.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let (tx, _rx2): (SessionTx, _) = mpsc::channel(16);
    agg.attach_from(hello("fra-1", "restarted", 0), tx, "10.1.2.3:9".into())
        .await
        .expect("a silent holder gives way");
    let replaced = holder_rx.recv().await.map(|m| *m).unwrap().unwrap_err();
    assert_eq!(replaced.code(), tonic::Code::Aborted);
}

#[tokio::test(start_paused = true)]
async fn a_closed_holder_gives_way_at_once() {
    let agg = Aggregator::spawn(config(), vec![]).expect("aggregator");
    let mut p = attach(&agg, "fra-1", "a", 0).await;
    p.rx.close();
    let again = attach(&agg, "fra-1", "b", 0).await;
    assert!(again.session_id > p.session_id);
}

#[tokio::test(start_paused = true)]
async fn beyond_max_vantages_a_new_name_is_resource_exhausted() {
    let agg = Aggregator::spawn(
        AggregatorConfig {
            max_vantages: 3,
            ..config()
        },
        vec![],
    )
    .expect("aggregator");
    let _keep: Vec<_> =
        futures::future::join_all(["a", "b", "c"].map(|n| attach(&agg, n, n, 0))).await;
    let (tx, _rx): (SessionTx, _) = mpsc::channel(16);
    let s = refusal(agg.attach(hello("d", "d", 0), tx).await);
    assert_eq!(s.code(), tonic::Code::ResourceExhausted);
    assert!(s.message().contains("max_vantages is 3"), "{}", s.message());
    assert_eq!(agg.vantages().await.unwrap().len(), 3, "nothing changed");
    assert_eq!(agg.stats().guard.refused_full, 1);
}

#[tokio::test(start_paused = true)]
async fn a_sequence_jump_past_the_window_is_refused_and_instance_ids_stay_hidden() {
    let agg = Aggregator::spawn(config(), vec![]).expect("aggregator");
    let p = attach(&agg, "fra-1", "secret-instance", 0).await;
    ingest(&agg, &p, vec![obs(1, 200)]).await;
    ingest(&agg, &p, vec![obs(u64::MAX, 503)]).await;
    ingest(
        &agg,
        &p,
        vec![obs(2 + vantage_server::aggregator::SEQ_WINDOW, 503)],
    )
    .await;
    let v = vantage(&agg, "fra-1").await;
    assert_eq!((v.last_applied_seq, v.applied), (1, 1));
    assert_eq!(v.instance_id, "", "readers never see instance ids");
    // The next honest observation still applies.
    ingest(&agg, &p, vec![obs(2, 200)]).await;
    assert_eq!(vantage(&agg, "fra-1").await.last_applied_seq, 2);
    let stats = agg.stats();
    assert_eq!(stats.guard.rejected.get("seq_window"), Some(&2));
    let (r, _) = agg.report().await.unwrap();
    assert_eq!(
        r.access_url.report.base.severity,
        vantage_proto::Severity::Ok
    );
}

#[tokio::test(start_paused = true)]
async fn insane_observations_are_counted_by_reason_and_not_applied() {
    let agg = Aggregator::spawn(config(), vec![]).expect("aggregator");
    let p = attach(&agg, "fra-1", "a", 0).await;
    let future = pb::Observation {
        observed_at: Some(prost_types::Timestamp {
            seconds: 253_402_300_799, // 9999-12-31
            nanos: 0,
        }),
        ..obs(1, 503)
    };
    let negative = pb::Observation {
        elapsed: Some(prost_types::Duration {
            seconds: -5,
            nanos: 0,
        }),
        ..obs(2, 503)
    };
    let mismatched = pb::Observation {
        section: pb::Section::Derp as i32,
        ..obs(3, 503)
    };
    let mut huge = obs(4, 503);
    huge.result = Some(ObsResult::AccessUrl(pb::AccessUrlResult {
        reachable: true,
        status_code: 503,
        healthz_response: "x".repeat(900_000),
        ..Default::default()
    }));
    ingest(&agg, &p, vec![future, negative, mismatched, huge]).await;
    let eacs04 = |r: &vantage_proto::report::HealthReport| r.access_url.report.status_code == 503;
    let (r, _) = agg.report().await.unwrap();
    assert!(!eacs04(&r), "no rejected 503 was applied");
    // The control: a sane 503 is applied.
    ingest(&agg, &p, vec![obs(5, 503)]).await;
    let (r, _) = agg.report().await.unwrap();
    assert!(eacs04(&r), "{:?}", r.access_url.report);
    let g = agg.stats().guard;
    for reason in ["observed_at", "elapsed", "section_mismatch", "body_size"] {
        assert_eq!(g.rejected.get(reason), Some(&1), "{reason}: {g:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn only_stale_vantages_are_forgotten_unless_forced() {
    let agg = Aggregator::spawn(config(), vec![]).expect("aggregator");
    let mut p = attach(&agg, "fra-1", "a", 0).await;
    assert_eq!(
        agg.forget("fra-1".into(), false).await.unwrap(),
        ForgetOutcome::Live { connected: true }
    );
    assert_eq!(agg.vantages().await.unwrap().len(), 1, "nothing changed");
    assert_eq!(
        agg.forget("nope".into(), false).await.unwrap(),
        ForgetOutcome::NotFound
    );
    assert_eq!(
        agg.forget("fra-1".into(), true).await.unwrap(),
        ForgetOutcome::Forgotten
    );
    let closed = loop {
        match *p.rx.recv().await.unwrap() {
            Err(s) => break s,
            Ok(_) => continue,
        }
    };
    assert_eq!(closed.code(), tonic::Code::Aborted);
    // A detached, stale vantage may be forgotten without force.
    let q = attach(&agg, "iad-1", "b", 0).await;
    agg.send(ProbeCommand::Detach {
        name: "iad-1".into(),
        session_id: q.session_id,
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        agg.forget("iad-1".into(), false).await.unwrap(),
        ForgetOutcome::Forgotten
    );
}

/// RunNow requests a session has been sent.
fn run_nows(rx: &mut mpsc::Receiver<Outgoing>) -> Vec<u64> {
    let mut ids = Vec::new();
    while let Ok(Ok(m)) = rx.try_recv().map(|m| *m) {
        if let Some(Down::RunNow(r)) = m.msg {
            ids.push(r.request_id);
        }
    }
    ids
}

#[tokio::test(start_paused = true)]
async fn force_is_coalesced_and_a_silent_vantage_holds_nobody_twice() {
    let agg = Aggregator::spawn(config(), vec![]).expect("aggregator");
    let mut good = attach(&agg, "fra-1", "a", 0).await;
    let mut silent = attach(&agg, "iad-1", "b", 0).await;
    let first = agg.force().await.unwrap();
    let id = run_nows(&mut good.rx);
    assert_eq!(id.len(), 1);
    agg.send(ProbeCommand::RunComplete {
        name: "fra-1".into(),
        request_id: id[0],
    })
    .await
    .unwrap();
    // 100 forces at once: joined or coalesced, never 100 runs.
    for _ in 0..100 {
        let _ = agg.force().await.unwrap();
    }
    assert!(run_nows(&mut good.rx).is_empty(), "coalesced per vantage");
    assert_eq!(run_nows(&mut silent.rx).len(), 1);
    assert_eq!(
        first.pending.borrow().iter().cloned().collect::<Vec<_>>(),
        vec!["iad-1".to_owned()],
        "the silent one is still pending"
    );
    // After the force timeout (30 s here) a new force asks both again but waits only for the
    // one that answered last time.
    tokio::time::sleep(Duration::from_secs(31)).await;
    let second = agg.force().await.unwrap();
    assert_eq!(second.silent, vec!["iad-1".to_owned()]);
    assert_eq!(
        second.pending.borrow().iter().cloned().collect::<Vec<_>>(),
        vec!["fra-1".to_owned()]
    );
    assert_eq!(run_nows(&mut silent.rx).len(), 1, "asked all the same");
    let id = run_nows(&mut good.rx);
    agg.send(ProbeCommand::RunComplete {
        name: "fra-1".into(),
        request_id: id[0],
    })
    .await
    .unwrap();
    // Done; a force right after is coalesced for both: nobody runs again so soon.
    let third = agg.force().await.unwrap();
    assert!(third.pending.borrow().is_empty());
    assert!(run_nows(&mut good.rx).is_empty() && run_nows(&mut silent.rx).is_empty());
    assert_eq!(agg.stats().guard.force_coalesced, 2);
}

#[tokio::test(start_paused = true)]
async fn observations_of_targets_the_assignment_does_not_name_are_refused() {
    let agg = Aggregator::spawn(config(), vec![]).expect("aggregator");
    let p = attach(&agg, "fra-1", "a", 0).await;
    ingest(&agg, &p, vec![obs(1, 200)]).await;
    let forged = (2..=300)
        .map(|seq| pb::Observation {
            target: format!("http://target-{seq}"),
            ..obs(seq, 503)
        })
        .collect();
    ingest(&agg, &p, forged).await;
    let kept: Vec<_> = agg
        .targets()
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.vantage == "fra-1")
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(kept[0].target, "http://x", "the assigned target stays");
    assert_eq!(
        agg.stats().guard.rejected.get("unassigned_target"),
        Some(&299)
    );
    let (r, _) = agg.report().await.unwrap();
    assert_eq!(
        r.access_url.report.base.severity,
        vantage_proto::Severity::Ok,
        "the forged 503s changed nothing"
    );
}

/// A DERP region's check takes observations of the region's nodes (as the probe names them)
/// and of nothing else.
#[tokio::test(start_paused = true)]
async fn a_derp_check_takes_only_the_nodes_of_its_region() {
    use vantage_server::ingest::inventory::check_ids;
    let agg = Aggregator::spawn(config(), vec![]).expect("aggregator");
    let (tx, _rx): (SessionTx, _) = mpsc::channel(64);
    let a = agg.attach(hello("fra-1", "a", 0), tx).await.unwrap();
    let region = r#"{"RegionID":7,"RegionCode":"fra","RegionName":"Frankfurt","Nodes":[{"Name":"7a","RegionID":7,"HostName":"derp.example"}]}"#;
    let assignment = pb::Assignment {
        checks: vec![pb::Check {
            id: "derp/7".into(),
            section: pb::Section::Derp as i32,
            target: Some(pb::check::Target::DerpRegion(pb::DerpRegionTarget {
                region_json: region.into(),
                ..Default::default()
            })),
            ..Default::default()
        }],
        ..Default::default()
    };
    let check_ids = check_ids(&assignment);
    assert!(
        check_ids[0].targets.contains("derp/7/7a"),
        "{:?}",
        check_ids[0].targets
    );
    agg.send(ProbeCommand::Assigned {
        name: "fra-1".into(),
        check_ids,
    })
    .await
    .unwrap();
    let node = |seq: u64, target: &str| pb::Observation {
        seq,
        check_id: "derp/7".into(),
        section: pb::Section::Derp as i32,
        target: target.into(),
        result: Some(ObsResult::DerpNode(Box::new(pb::DerpNodeResult {
            region_id: 7,
            node_name: "7a".into(),
            can_exchange_messages: true,
            ..Default::default()
        }))),
        ..Default::default()
    };
    let observations = vec![
        node(1, "derp/7/7a"),
        node(2, "derp/7/7b"),
        node(3, "derp/8/7a"),
        node(4, "http://x"),
    ];
    agg.ingest("fra-1".into(), a.session_id, observations)
        .await
        .unwrap();
    let kept: Vec<String> = agg
        .targets()
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.vantage == "fra-1")
        .map(|t| t.target)
        .collect();
    assert_eq!(kept, ["derp/7/7a"]);
    assert_eq!(
        agg.stats().guard.rejected.get("unassigned_target"),
        Some(&3)
    );
}

/// `Hello.last_acked_seq` is bounded like an observation's sequence: a fresh instance may not
/// claim more than the window past 0, so `u64::MAX` cannot freeze the vantage.
#[tokio::test(start_paused = true)]
async fn a_hello_claiming_acks_past_the_window_is_refused_and_changes_nothing() {
    let window = vantage_server::aggregator::SEQ_WINDOW;
    let agg = Aggregator::spawn(config(), vec![]).expect("aggregator");
    for claimed in [u64::MAX, window + 1] {
        let (tx, _rx): (SessionTx, _) = mpsc::channel(16);
        let s = refusal(agg.attach(hello("fra-1", "forger", claimed), tx).await);
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert!(
            s.message().contains("hello.last_acked_seq")
                && s.message().contains(&claimed.to_string())
                && s.message().contains(&format!("at most {window}")),
            "names the field, the value and the bound: {}",
            s.message()
        );
    }
    assert!(
        agg.vantages().await.unwrap().is_empty(),
        "nothing was created"
    );
    assert_eq!(agg.stats().guard.refused_seq, 2);
    // At the bound it is taken: the next observation continues after it.
    let p = attach(&agg, "fra-1", "honest", window).await;
    assert_eq!(p.applied_seq, window);
    ingest(&agg, &p, vec![obs(window + 1, 200)]).await;
    assert_eq!(vantage(&agg, "fra-1").await.last_applied_seq, window + 1);
}

/// Once a name's holder is gone, a session naming its instance resumes it only as that
/// instance would: claiming no more than was applied for it. A claim past that is refused and
/// changes nothing; the instance itself comes back where it was; a new instance starts fresh.
#[tokio::test(start_paused = true)]
async fn a_hello_may_not_resume_another_sessions_instance() {
    let agg = Aggregator::spawn(config(), vec![]).expect("aggregator");
    let mut real = attach(&agg, "fra-1", "real", 0).await;
    ingest(&agg, &real, (1..=5).map(|seq| obs(seq, 200)).collect()).await;
    assert_eq!(vantage(&agg, "fra-1").await.last_applied_seq, 5);
    real.rx.close();
    // An impostor that knows the instance id claims acks it was never sent.
    let (tx, _rx): (SessionTx, _) = mpsc::channel(16);
    let s = refusal(agg.attach(hello("fra-1", "real", 6), tx).await);
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
    assert!(
        s.message().contains("hello.last_acked_seq: 6")
            && s.message().contains("the 5 this server applied")
            && s.message().contains("its own instance"),
        "{}",
        s.message()
    );
    let v = vantage(&agg, "fra-1").await;
    assert_eq!((v.last_applied_seq, v.applied), (5, 5), "nothing changed");
    assert_eq!(agg.stats().guard.refused_seq, 1);
    // The instance reconnecting (it saw 4 of its 5 acks) resumes where it was.
    let mut back = attach(&agg, "fra-1", "real", 4).await;
    assert_eq!(back.applied_seq, 5);
    ingest(&agg, &back, vec![obs(5, 503), obs(6, 200)]).await;
    let v = vantage(&agg, "fra-1").await;
    assert_eq!((v.last_applied_seq, v.duplicates), (6, 1));
    back.rx.close();
    // A new process of the vantage starts afresh.
    let fresh = attach(&agg, "fra-1", "restarted", 0).await;
    assert_eq!(fresh.applied_seq, 0);
    ingest(&agg, &fresh, vec![obs(1, 200)]).await;
    assert_eq!(vantage(&agg, "fra-1").await.last_applied_seq, 1);
}

/// A vantage that does not even acknowledge its RunNow (a probe sends a heartbeat on receiving
/// one) stops being waited for at the first force: it joins the silent ones, and the run waits
/// only for those that acknowledged.
#[tokio::test(start_paused = true)]
async fn a_force_stops_waiting_for_a_vantage_that_never_acknowledged_its_run_now() {
    let agg = Aggregator::spawn(config(), vec![]).expect("aggregator");
    let mut good = attach(&agg, "fra-1", "a", 0).await;
    let mut lazy = attach(&agg, "iad-1", "b", 0).await;
    let mut run = agg.force().await.unwrap();
    assert_eq!(run_nows(&mut good.rx).len(), 1);
    assert_eq!(run_nows(&mut lazy.rx).len(), 1);
    agg.send(ProbeCommand::Heartbeat {
        name: "fra-1".into(),
        session_id: good.session_id,
        replay_dropped: 0,
    })
    .await
    .unwrap();
    assert_eq!(agg.force_unheard().await.unwrap(), ["iad-1"]);
    assert_eq!(
        run.pending.borrow().iter().collect::<Vec<_>>(),
        ["fra-1"],
        "only the vantage that acknowledged is still waited for"
    );
    // Once it answers, the run is over: nobody holds it for the rest of the timeout.
    agg.send(ProbeCommand::RunComplete {
        name: "fra-1".into(),
        request_id: 0,
    })
    .await
    .unwrap();
    run.pending.wait_for(|p| p.is_empty()).await.unwrap();
    // The next force does not wait for the lazy one either.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let next = agg.force().await.unwrap();
    assert_eq!(next.silent, ["iad-1"]);
    assert!(!next.pending.borrow().contains("iad-1"));
}
