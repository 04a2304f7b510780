//! Appending to the observation log: the log rows, the vantages' applied sequence numbers and
//! the latest observation per (vantage, check, target), in one transaction.

use super::*;

/// Append `observations` in order; their log ids, ascending.
pub(super) async fn append(
    mut c: Object,
    observations: Vec<NewObservation>,
) -> Result<Vec<i64>, Failure> {
    if observations.is_empty() {
        return Ok(Vec::new());
    }
    let n = observations.len();
    let mut vantages = Vec::with_capacity(n);
    let mut instances = Vec::with_capacity(n);
    let mut checks = Vec::with_capacity(n);
    let mut seqs = Vec::with_capacity(n);
    let mut bodies = Vec::with_capacity(n);
    for o in &observations {
        vantages.push(o.vantage.clone());
        instances.push(o.instance_id.clone());
        checks.push(o.observation.check_id.clone());
        seqs.push(to_i64("seq", o.observation.seq)?);
        bodies.push(o.observation.encode_to_vec());
    }
    let applied = applied_by_batch(&observations);
    let mut a_names = Vec::with_capacity(applied.len());
    let mut a_instances = Vec::with_capacity(applied.len());
    let mut a_seqs = Vec::with_capacity(applied.len());
    for (name, (instance, seq)) in &applied {
        a_names.push((*name).to_owned());
        a_instances.push((*instance).to_owned());
        a_seqs.push(to_i64("seq", *seq)?);
    }

    let tx = c.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&OBSERVATION_LOCK])
        .await?;
    let insert = tx
        .prepare_cached(
            "INSERT INTO vantage_observation_log
                         (vantage, instance_id, check_id, seq, observation)
                     SELECT v, i, c, s, o
                     FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::bytea[])
                         WITH ORDINALITY AS t(v, i, c, s, o, n)
                     ORDER BY n
                     RETURNING id",
        )
        .await?;
    let mut ids: Vec<i64> = tx
        .query(&insert, &[&vantages, &instances, &checks, &seqs, &bodies])
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

    // The latest per (vantage, check, target): the last of each in this batch.
    let mut latest: BTreeMap<(&str, String), usize> = BTreeMap::new();
    for (i, o) in observations.iter().enumerate() {
        latest.insert((&o.vantage, crate::store::latest_key(&o.observation)), i);
    }
    let mut l_vantages = Vec::with_capacity(latest.len());
    let mut l_checks = Vec::with_capacity(latest.len());
    let mut l_ids = Vec::with_capacity(latest.len());
    let mut l_instances = Vec::with_capacity(latest.len());
    let mut l_bodies = Vec::with_capacity(latest.len());
    for ((v, check), i) in latest {
        l_vantages.push(v.to_owned());
        l_checks.push(check);
        l_ids.push(ids[i]);
        l_instances.push(instances[i].clone());
        l_bodies.push(bodies[i].clone());
    }
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
    tx.execute(&upsert_applied, &[&a_names, &a_instances, &a_seqs])
        .await?;
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
        &[&l_vantages, &l_checks, &l_ids, &l_instances, &l_bodies],
    )
    .await?;
    let highest = ids.last().copied().unwrap_or_default().to_string();
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[&CHANNEL_OBSERVATIONS, &highest],
    )
    .await?;
    tx.commit().await?;
    Ok(ids)
}
