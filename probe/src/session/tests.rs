use super::*;

fn obs() -> pb::Observation {
    pb::Observation::default()
}

#[test]
fn buffer_numbers_acks_and_bounds() {
    let mut b = ReplayBuffer::new(3);
    for _ in 0..5 {
        b.push(obs());
    }
    assert_eq!(b.last_seq(), 5);
    assert_eq!(b.len(), 3);
    assert_eq!(b.dropped(), 2);
    assert_eq!(
        b.after(0, 10).iter().map(|o| o.seq).collect::<Vec<_>>(),
        vec![3, 4, 5]
    );
    b.ack(4);
    assert_eq!(
        b.after(0, 10).iter().map(|o| o.seq).collect::<Vec<_>>(),
        vec![5]
    );
    b.ack(2); // stale ack changes nothing
    assert_eq!(b.acked(), 4);
    b.ack(99); // never beyond what was assigned
    assert_eq!(b.acked(), 5);
    assert!(b.is_empty());
}

fn assignment(heartbeat: Option<prost_types::Duration>) -> pb::Assignment {
    pb::Assignment {
        heartbeat_interval: heartbeat,
        ..Default::default()
    }
}

#[test]
fn heartbeat_interval_follows_the_assignment_within_bounds() {
    let secs = |s: u64| Some(vantage_proto::convert::duration(Duration::from_secs(s)));
    let cases = [
        (None, DEFAULT_HEARTBEAT),
        (secs(0), DEFAULT_HEARTBEAT),
        (
            Some(prost_types::Duration {
                seconds: -3,
                nanos: 0,
            }),
            DEFAULT_HEARTBEAT,
        ),
        (secs(5), Duration::from_secs(5)),
        (secs(2), Duration::from_secs(2)),
        (secs(30), Duration::from_secs(30)),
        (
            Some(vantage_proto::convert::duration(Duration::from_millis(10))),
            MIN_HEARTBEAT,
        ),
        (secs(3600), MAX_HEARTBEAT),
    ];
    for (given, want) in cases {
        assert_eq!(heartbeat_interval(&assignment(given)), want, "{given:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn heartbeat_ticks_at_once_then_every_period_and_follows_a_new_one() {
    let start = Instant::now();
    let mut hb = Heartbeat::new(Duration::from_secs(2));
    hb.tick().await;
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "the first tick is immediate"
    );
    hb.tick().await;
    assert_eq!(start.elapsed(), Duration::from_secs(2));

    hb.set_period(Duration::from_secs(2)); // unchanged: keeps its schedule
    hb.tick().await;
    assert_eq!(start.elapsed(), Duration::from_secs(4));

    tokio::time::advance(Duration::from_millis(500)).await;
    hb.set_period(Duration::from_secs(7));
    assert_eq!(hb.period(), Duration::from_secs(7));
    hb.tick().await;
    assert_eq!(start.elapsed(), Duration::from_millis(11_500));
    hb.tick().await;
    assert_eq!(start.elapsed(), Duration::from_millis(18_500));
}

#[tokio::test(start_paused = true)]
async fn the_first_retry_comes_within_250ms_and_later_ones_back_off() {
    for _ in 0..20 {
        let mut f = Failover::new(vec!["http://127.0.0.1:1".into()]);
        let mut waits = Vec::new();
        for _ in 0..8 {
            let start = Instant::now();
            tokio::time::sleep(f.failed()).await;
            waits.push(start.elapsed());
        }
        assert!(waits[0] <= FIRST_RETRY, "first retry after {:?}", waits[0]);
        assert!(waits[0] >= FIRST_RETRY / 2, "jittered, not zero: {waits:?}");
        // Until the cap (10 s), each delay is above the one two before it.
        for pair in waits[..6].windows(3) {
            assert!(pair[2] > pair[0], "the delays grow: {waits:?}");
        }
        assert!(waits[7] >= Duration::from_secs(5), "backed off: {waits:?}");
        assert!(waits.iter().all(|w| *w <= BACKOFF_MAX), "{waits:?}");
        // Attached again: the next loss retries quickly again.
        f.attached();
        let start = Instant::now();
        tokio::time::sleep(f.failed()).await;
        assert!(start.elapsed() <= FIRST_RETRY);
    }
}

#[test]
fn failover_tries_the_servers_in_order_and_wraps() {
    let mut f = Failover::new(vec!["a".into(), "b".into(), "c".into()]);
    assert_eq!(f.current(), "a", "the first given is tried first");
    f.attached();
    assert_eq!(f.current(), "a", "and kept while it answers");
    let mut seen = Vec::new();
    for _ in 0..4 {
        f.failed();
        seen.push(f.current().to_owned());
    }
    assert_eq!(seen, ["b", "c", "a", "b"]);
    let mut one = Failover::new(vec!["only".into()]);
    one.failed();
    assert_eq!(one.current(), "only");
}

#[test]
fn after_respects_max() {
    let mut b = ReplayBuffer::new(100);
    for _ in 0..10 {
        b.push(obs());
    }
    let got: Vec<_> = b.after(3, 4).iter().map(|o| o.seq).collect();
    assert_eq!(got, vec![4, 5, 6, 7]);
}

#[test]
fn observations_wait_for_company_unless_something_waits_on_them() {
    let t0 = Instant::now();
    let later = |ms: u64| t0 + Duration::from_millis(ms);
    let mut l = Linger::default();
    assert_eq!(l.send_at(0, false, t0), None, "nothing to send");
    // The first arrives: it waits LINGER; others arriving meanwhile do not move that.
    assert_eq!(l.send_at(1, false, t0), Some(t0 + LINGER));
    assert_eq!(l.send_at(5, false, later(30)), Some(t0 + LINGER));
    // A full message goes at once.
    assert_eq!(l.send_at(BATCH as u64, false, later(31)), Some(later(31)));
    // So does one a forced run waits on.
    assert_eq!(l.send_at(2, true, later(32)), Some(later(32)));
    // What a message left goes at once; once all is sent, the next waits again.
    l.flush();
    assert_eq!(l.send_at(3, false, later(40)), Some(later(40)));
    assert_eq!(l.send_at(0, false, later(41)), None);
    assert_eq!(l.send_at(1, false, later(60)), Some(later(60) + LINGER));
}
