//! [`RegistryStore`] for [`PgStore`]: provisioner daemons and workspace proxies, upserted by
//! name; of two saves of one entry the newer wins (`last_seen_at` for daemons, `updated_at`
//! for proxies) through `ON CONFLICT … DO UPDATE … WHERE`, whatever order they arrive in.
//! Timestamps are kept to the microsecond (PostgreSQL's precision).

use std::collections::BTreeMap;

use futures::future::BoxFuture;

use super::{Failure, PgStore};
use crate::registry::{
    NIL_UUID, ProvisionerDaemon, ProxySource, RegistrySnapshot, RegistryStore, WorkspaceProxy,
};
use crate::store::StoreError;

fn tags_json(tags: &BTreeMap<String, String>) -> Result<serde_json::Value, Failure> {
    serde_json::to_value(tags).map_err(|e| Failure(format!("encoding tags: {e}")))
}

fn source(s: &str) -> Result<ProxySource, Failure> {
    ProxySource::parse(s).ok_or_else(|| Failure(format!("unknown proxy source {s:?}")))
}

impl RegistryStore for PgStore {
    fn load_registry(&self) -> BoxFuture<'_, Result<RegistrySnapshot, StoreError>> {
        Box::pin(self.run("loading the registry", |c| async move {
            let daemons = c
                .query(
                    "SELECT id, organization_id, name, version, api_version, provisioners, tags,
                            created_at, last_seen_at
                     FROM vantage_provisioner_daemons ORDER BY name",
                    &[],
                )
                .await?
                .into_iter()
                .map(|r| {
                    let tags: serde_json::Value = r.get(6);
                    Ok(ProvisionerDaemon {
                        id: r.get(0),
                        organization_id: r.get(1),
                        key_id: NIL_UUID.to_owned(),
                        name: r.get(2),
                        version: r.get(3),
                        api_version: r.get(4),
                        provisioners: r.get(5),
                        tags: serde_json::from_value(tags)
                            .map_err(|e| Failure(format!("decoding tags: {e}")))?,
                        created_at: r.get(7),
                        last_seen_at: r.get(8),
                    })
                })
                .collect::<Result<Vec<_>, Failure>>()?;
            let proxies = c
                .query(
                    "SELECT id, name, display_name, icon_url, url, region, derp_enabled, derp_only,
                            version, created_at, updated_at, source
                     FROM vantage_workspace_proxies ORDER BY name",
                    &[],
                )
                .await?
                .into_iter()
                .map(|r| {
                    Ok(WorkspaceProxy {
                        id: r.get(0),
                        name: r.get(1),
                        display_name: r.get(2),
                        icon_url: r.get(3),
                        url: r.get(4),
                        region: r.get(5),
                        derp_enabled: r.get(6),
                        derp_only: r.get(7),
                        version: r.get(8),
                        created_at: r.get(9),
                        updated_at: r.get(10),
                        source: source(r.get(11))?,
                    })
                })
                .collect::<Result<Vec<_>, Failure>>()?;
            Ok(RegistrySnapshot { daemons, proxies })
        }))
    }

    fn save_daemon(&self, daemon: ProvisionerDaemon) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(
            self.run("saving a provisioner daemon", move |c| async move {
                let tags = tags_json(&daemon.tags)?;
                // The registry's daemons were all seen (a heartbeat made them).
                let last_seen_at = daemon.last_seen_at.unwrap_or(daemon.created_at);
                c.execute(
                    "INSERT INTO vantage_provisioner_daemons AS d
                     (name, id, organization_id, version, api_version, provisioners, tags,
                      created_at, last_seen_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                 ON CONFLICT (name) DO UPDATE SET
                     id = EXCLUDED.id,
                     organization_id = EXCLUDED.organization_id,
                     version = EXCLUDED.version,
                     api_version = EXCLUDED.api_version,
                     provisioners = EXCLUDED.provisioners,
                     tags = EXCLUDED.tags,
                     created_at = EXCLUDED.created_at,
                     last_seen_at = EXCLUDED.last_seen_at
                 WHERE d.last_seen_at <= EXCLUDED.last_seen_at",
                    &[
                        &daemon.name,
                        &daemon.id,
                        &daemon.organization_id,
                        &daemon.version,
                        &daemon.api_version,
                        &daemon.provisioners,
                        &tags,
                        &daemon.created_at,
                        &last_seen_at,
                    ],
                )
                .await?;
                Ok(())
            }),
        )
    }

    fn delete_daemons(&self, names: Vec<String>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(
            self.run("deleting provisioner daemons", move |c| async move {
                c.execute(
                    "DELETE FROM vantage_provisioner_daemons WHERE name = ANY($1)",
                    &[&names],
                )
                .await?;
                Ok(())
            }),
        )
    }

    fn save_proxy(&self, proxy: WorkspaceProxy) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.run("saving a workspace proxy", move |c| async move {
            c.execute(
                "INSERT INTO vantage_workspace_proxies AS p
                     (name, id, display_name, icon_url, url, region, derp_enabled, derp_only,
                      version, created_at, updated_at, source)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                 ON CONFLICT (name) DO UPDATE SET
                     id = EXCLUDED.id,
                     display_name = EXCLUDED.display_name,
                     icon_url = EXCLUDED.icon_url,
                     url = EXCLUDED.url,
                     region = EXCLUDED.region,
                     derp_enabled = EXCLUDED.derp_enabled,
                     derp_only = EXCLUDED.derp_only,
                     version = EXCLUDED.version,
                     created_at = EXCLUDED.created_at,
                     updated_at = EXCLUDED.updated_at,
                     source = EXCLUDED.source
                 WHERE p.updated_at <= EXCLUDED.updated_at",
                &[
                    &proxy.name,
                    &proxy.id,
                    &proxy.display_name,
                    &proxy.icon_url,
                    &proxy.url,
                    &proxy.region,
                    &proxy.derp_enabled,
                    &proxy.derp_only,
                    &proxy.version,
                    &proxy.created_at,
                    &proxy.updated_at,
                    &proxy.source.as_str(),
                ],
            )
            .await?;
            Ok(())
        }))
    }

    fn delete_proxy(&self, name: String) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.run("deleting a workspace proxy", move |c| async move {
            c.execute(
                "DELETE FROM vantage_workspace_proxies WHERE name = $1",
                &[&name],
            )
            .await?;
            Ok(())
        }))
    }
}
