//! The schema: versioned SQL files embedded in the binary, applied under an advisory lock.

use super::*;

/// One schema migration, embedded in the binary.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in version order. Append; never edit a released one.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial",
        sql: include_str!("../../../migrations/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "coder_proxies",
        sql: include_str!("../../../migrations/0002_coder_proxies.sql"),
    },
    Migration {
        version: 3,
        name: "dismissal_notes",
        sql: include_str!("../../../migrations/0003_dismissal_notes.sql"),
    },
    Migration {
        version: 4,
        name: "history",
        sql: include_str!("../../../migrations/0004_history.sql"),
    },
];

/// Apply the migrations not yet applied, in one transaction under [`MIGRATION_LOCK`].
pub(super) async fn migrate(client: &mut Object) -> Result<(), Failure> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS vantage_schema_migrations (
             version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let applied: Vec<i32> = tx
        .query("SELECT version FROM vantage_schema_migrations", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for m in MIGRATIONS {
        if applied.contains(&m.version) {
            continue;
        }
        tx.batch_execute(m.sql).await.map_err(|e| {
            Failure(format!(
                "applying migration {} ({}): {}",
                m.version,
                m.name,
                pg_text(&e)
            ))
        })?;
        tx.execute(
            "INSERT INTO vantage_schema_migrations (version) VALUES ($1)",
            &[&m.version],
        )
        .await?;
        tracing::info!(
            version = m.version,
            name = m.name,
            "applied a schema migration"
        );
    }
    if let Some(newer) = applied
        .iter()
        .filter(|v| !MIGRATIONS.iter().any(|m| m.version == **v))
        .max()
    {
        tracing::warn!(
            version = newer,
            "the database has a newer schema than this server knows; running with it"
        );
    }
    tx.commit().await?;
    Ok(())
}
