//! Appending to the observation log: the log rows, the vantages' applied sequence numbers and
//! the latest observation per (vantage, check, target), in one transaction.

use deadpool_postgres::Transaction;

use super::*;

/// Append `observations` in order; their log ids, ascending.
pub(super) async fn append(
    mut c: Object,
    observations: Vec<NewObservation>,
) -> Result<Vec<i64>, Failure> {
    if observations.is_empty() {
        return Ok(Vec::new());
    }
    let log = LogColumns::new(&observations)?;
    let applied = AppliedColumns::new(&observations)?;

    let tx = c.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&OBSERVATION_LOCK])
        .await?;
    let ids = insert_log(&tx, &log).await?;
    let latest = LatestColumns::new(&observations, &ids, &log);
    upsert_applied(&tx, &applied).await?;
    upsert_latest(&tx, &latest).await?;
    notify_and_commit(tx, &ids).await?;
    Ok(ids)
}

/// The log rows' columns, one entry per observation, in order.
struct LogColumns {
    vantages: Vec<String>,
    instances: Vec<String>,
    checks: Vec<String>,
    seqs: Vec<i64>,
    bodies: Vec<Vec<u8>>,
    /// For the history: the section number (NULL when out of range), target and time.
    sections: Vec<Option<i16>>,
    targets: Vec<String>,
    observed: Vec<Option<chrono::DateTime<chrono::Utc>>>,
}

impl LogColumns {
    /// Split `observations` into columns (a sequence number too large to store fails).
    fn new(observations: &[NewObservation]) -> Result<LogColumns, Failure> {
        let n = observations.len();
        let mut cols = LogColumns {
            vantages: Vec::with_capacity(n),
            instances: Vec::with_capacity(n),
            checks: Vec::with_capacity(n),
            seqs: Vec::with_capacity(n),
            bodies: Vec::with_capacity(n),
            sections: Vec::with_capacity(n),
            targets: Vec::with_capacity(n),
            observed: Vec::with_capacity(n),
        };
        for o in observations {
            cols.vantages.push(o.vantage.clone());
            cols.instances.push(o.instance_id.clone());
            cols.checks.push(o.observation.check_id.clone());
            cols.seqs.push(to_i64("seq", o.observation.seq)?);
            cols.bodies.push(o.observation.encode_to_vec());
            cols.sections
                .push(i16::try_from(o.observation.section).ok());
            cols.targets.push(o.observation.target.clone());
            cols.observed
                .push(history::storable_time(o.observation.observed_at.as_ref()));
        }
        Ok(cols)
    }
}

/// Per vantage in the batch: the instance and the highest sequence number it applied.
struct AppliedColumns {
    names: Vec<String>,
    instances: Vec<String>,
    seqs: Vec<i64>,
}

impl AppliedColumns {
    /// The applied sequence per vantage of `observations`, as columns.
    fn new(observations: &[NewObservation]) -> Result<AppliedColumns, Failure> {
        let applied = applied_by_batch(observations);
        let mut cols = AppliedColumns {
            names: Vec::with_capacity(applied.len()),
            instances: Vec::with_capacity(applied.len()),
            seqs: Vec::with_capacity(applied.len()),
        };
        for (name, (instance, seq)) in &applied {
            cols.names.push((*name).to_owned());
            cols.instances.push((*instance).to_owned());
            cols.seqs.push(to_i64("seq", *seq)?);
        }
        Ok(cols)
    }
}

/// The latest observation per (vantage, check, target) of the batch, as columns.
struct LatestColumns {
    vantages: Vec<String>,
    checks: Vec<String>,
    ids: Vec<i64>,
    instances: Vec<String>,
    bodies: Vec<Vec<u8>>,
}

impl LatestColumns {
    /// The last of each (vantage, check, target) in `observations`, with its log id from
    /// `ids` (in the batch's order).
    fn new(observations: &[NewObservation], ids: &[i64], log: &LogColumns) -> LatestColumns {
        let mut latest: BTreeMap<(&str, String), usize> = BTreeMap::new();
        for (i, o) in observations.iter().enumerate() {
            latest.insert((&o.vantage, crate::store::latest_key(&o.observation)), i);
        }
        let mut cols = LatestColumns {
            vantages: Vec::with_capacity(latest.len()),
            checks: Vec::with_capacity(latest.len()),
            ids: Vec::with_capacity(latest.len()),
            instances: Vec::with_capacity(latest.len()),
            bodies: Vec::with_capacity(latest.len()),
        };
        for ((v, check), i) in latest {
            cols.vantages.push(v.to_owned());
            cols.checks.push(check);
            cols.ids.push(ids[i]);
            cols.instances.push(log.instances[i].clone());
            cols.bodies.push(log.bodies[i].clone());
        }
        cols
    }
}

/// Insert the log rows; their ids, ascending (one per row, or a failure).
async fn insert_log(tx: &Transaction<'_>, log: &LogColumns) -> Result<Vec<i64>, Failure> {
    let n = log.vantages.len();
    let insert = tx
        .prepare_cached(
            "INSERT INTO vantage_observation_log
                         (vantage, instance_id, check_id, seq, observation,
                          section, target, observed_at)
                     SELECT v, i, c, s, o, sec, tg, at
                     FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::bytea[],
                                 $6::int2[], $7::text[], $8::timestamptz[])
                         WITH ORDINALITY AS t(v, i, c, s, o, sec, tg, at, n)
                     ORDER BY n
                     RETURNING id",
        )
        .await?;
    let mut ids: Vec<i64> = tx
        .query(
            &insert,
            &[
                &log.vantages,
                &log.instances,
                &log.checks,
                &log.seqs,
                &log.bodies,
                &log.sections,
                &log.targets,
                &log.observed,
            ],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    // Ids are drawn in row order; RETURNING's order is not promised.
    ids.sort_unstable();
    if ids.len() != n {
        return Err(Failure(format!(
            "the log returned {} ids for {n} observations",
            ids.len()
        )));
    }
    Ok(ids)
}

/// Advance the vantages' applied sequence (restarting it for a new instance).
async fn upsert_applied(tx: &Transaction<'_>, applied: &AppliedColumns) -> Result<(), Failure> {
    let upsert_applied = tx
        .prepare_cached(
            "INSERT INTO vantage_vantages AS v (name, instance_id, applied_seq)
                     SELECT * FROM unnest($1::text[], $2::text[], $3::int8[])
                     ON CONFLICT (name) DO UPDATE SET
                         instance_id = EXCLUDED.instance_id,
                         applied_seq = CASE WHEN v.instance_id = EXCLUDED.instance_id
                             THEN GREATEST(v.applied_seq, EXCLUDED.applied_seq)
                             ELSE EXCLUDED.applied_seq END",
        )
        .await?;
    tx.execute(
        &upsert_applied,
        &[&applied.names, &applied.instances, &applied.seqs],
    )
    .await?;
    Ok(())
}

/// Replace the latest observations that these are newer than.
async fn upsert_latest(tx: &Transaction<'_>, latest: &LatestColumns) -> Result<(), Failure> {
    let upsert_latest = tx
                .prepare_cached(
                    "INSERT INTO vantage_latest_observations AS l
                         (vantage, check_id, id, instance_id, observation)
                     SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[], $5::bytea[])
                     ON CONFLICT (vantage, check_id) DO UPDATE SET
                         id = EXCLUDED.id,
                         instance_id = EXCLUDED.instance_id,
                         observation = EXCLUDED.observation
                     WHERE l.id < EXCLUDED.id",
                )
                .await?;
    tx.execute(
        &upsert_latest,
        &[
            &latest.vantages,
            &latest.checks,
            &latest.ids,
            &latest.instances,
            &latest.bodies,
        ],
    )
    .await?;
    Ok(())
}

/// Notify the other replicas of the highest new id, and commit.
async fn notify_and_commit(tx: Transaction<'_>, ids: &[i64]) -> Result<(), Failure> {
    let highest = ids.last().copied().unwrap_or_default().to_string();
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[&CHANNEL_OBSERVATIONS, &highest],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}
