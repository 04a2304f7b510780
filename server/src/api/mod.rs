//! The report surfaces and what they share: [`App`] (the aggregator handle, the store, force
//! and settings), served over gRPC ([`grpc`]) and HTTP ([`http`]). Errors become a
//! `tonic::Status` or an HTTP response here, in one place per surface.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use tonic::Status;
use vantage_proto::Section;

use crate::aggregator::{Aggregator, Stopped};
use crate::store::{DismissalNote, Store};

/// Longest reason a dismissal may carry.
pub const MAX_REASON: usize = 500;
/// How long a force waits for a vantage to acknowledge its RunNow (a probe sends a heartbeat
/// on receiving it) before it stops waiting for it.
pub const FORCE_ACK_WAIT: Duration = Duration::from_secs(2);

pub mod grpc;
pub mod http;

impl From<Stopped> for Status {
    fn from(_: Stopped) -> Self {
        Status::unavailable("the server is shutting down")
    }
}

/// Shared by the gRPC and HTTP surfaces.
#[derive(Clone)]
pub struct App {
    pub agg: Aggregator,
    pub store: Arc<dyn Store>,
    /// The write-behind queue of observations, when a database is configured.
    pub writer: Option<crate::store::WriteBehind>,
    pub force_timeout: Duration,
    pub watchers: Arc<AtomicUsize>,
    /// Cancelled at shutdown: ends every watch stream.
    pub cancel: tokio_util::sync::CancellationToken,
    /// The Alertmanager sender's figures, when one is configured.
    pub alerts: Option<crate::alerts::AlertStats>,
    /// Coder's JSON of the latest report, encoded once and shared by every reader of it.
    pub report_json: Arc<ReportJson>,
}

/// The last report's JSON encoding: however many readers ask at once, a report is encoded
/// once and its bytes are shared (memory does not grow with concurrent GETs of a large report).
#[derive(Default)]
pub struct ReportJson {
    last: tokio::sync::Mutex<Option<(Arc<vantage_proto::report::HealthReport>, bytes::Bytes)>>,
}

impl ReportJson {
    /// The JSON of `report`: the shared bytes when it is the report last encoded.
    pub async fn of(&self, report: &Arc<vantage_proto::report::HealthReport>) -> bytes::Bytes {
        let mut last = self.last.lock().await;
        if let Some((r, body)) = last.as_ref()
            && Arc::ptr_eq(r, report)
        {
            return body.clone();
        }
        let body = bytes::Bytes::from(vantage_proto::report::coder_json(&**report));
        *last = Some((report.clone(), body.clone()));
        body
    }
}

/// Why a forced report did not complete.
#[derive(Debug)]
pub enum ForceError {
    Stopped,
    /// The names of the vantages still running when the time ran out.
    TimedOut(BTreeSet<String>),
}

impl ForceError {
    /// What a timed-out run was still waiting for: "Still running: a, b".
    pub fn still_running(names: &BTreeSet<String>) -> String {
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        format!("Still running: {}", names.join(", "))
    }
}

/// The health settings as both surfaces answer them: the dismissed sections, and the notes
/// (end time, reason, who, when) of those that have one. Each surface only encodes it.
#[derive(Debug, Clone, PartialEq)]
pub struct SettingsView {
    pub dismissed: Vec<Section>,
    pub notes: Vec<DismissalNote>,
}

impl SettingsView {
    /// The wire form of the dismissed sections (Coder's `dismissed_healthchecks`): their names.
    pub fn dismissed_names(&self) -> Vec<String> {
        self.dismissed
            .iter()
            .map(|s| s.settings_name().to_owned())
            .collect()
    }
}

/// One dismissal note of a settings change as a surface decoded it: the section's name, the
/// end time (or why the surface could not read it, naming the field) and the reason.
pub struct GivenNote {
    pub section: String,
    pub until: Result<Option<chrono::DateTime<chrono::Utc>>, String>,
    pub reason: String,
}

/// Why a history read failed.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("the server is shutting down")]
    Stopped,
    /// The database could not be read (the text names what failed, never the URL).
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl From<HistoryError> for Status {
    fn from(e: HistoryError) -> Self {
        Status::unavailable(e.to_string())
    }
}

impl App {
    /// The history `filter` selects: from the store's logs when it keeps them (PostgreSQL),
    /// else from the aggregator's in-memory ring.
    pub async fn history(
        &self,
        filter: crate::aggregator::HistoryFilter,
    ) -> Result<vantage_proto::pb::History, HistoryError> {
        match self.store.history(filter).await? {
            Some(h) => Ok(h),
            None => self
                .agg
                .history(filter)
                .await
                .map_err(|_| HistoryError::Stopped),
        }
    }

    /// Ask every connected vantage to run now; wait (bounded) until all have reported. Those
    /// that did not answer the previous forced run are asked but not waited for, nor are those
    /// that did not acknowledge the RunNow within [`FORCE_ACK_WAIT`] (a probe sends a
    /// heartbeat on receiving it): once the others have answered, the run ends as timed out,
    /// naming them.
    pub async fn force(&self) -> Result<(), ForceError> {
        let started = self.agg.force().await.map_err(|_| ForceError::Stopped)?;
        let mut silent = started.silent;
        let mut pending = started.pending;
        let deadline = tokio::time::Instant::now() + self.force_timeout;
        // An error means the run's sender is gone (the server stops): nothing to wait for.
        let ack_wait = FORCE_ACK_WAIT.min(self.force_timeout);
        let mut done = tokio::time::timeout(ack_wait, pending.wait_for(BTreeSet::is_empty))
            .await
            .is_ok();
        if !done {
            let unheard = self.agg.force_unheard().await.unwrap_or_default();
            silent.extend(unheard);
            done = tokio::time::timeout_at(deadline, pending.wait_for(BTreeSet::is_empty))
                .await
                .is_ok();
        }
        if done && silent.is_empty() {
            return Ok(());
        }
        // Those not waited for make the answer prompt, and are named as still running.
        let mut left: BTreeSet<String> = silent.into_iter().collect();
        if !done {
            left.extend(pending.borrow().iter().cloned());
        }
        Err(ForceError::TimedOut(left))
    }

    /// Validate settings names as Coder does; the error names the first bad one.
    pub fn parse_sections(names: &[String]) -> Result<Vec<Section>, vantage_proto::UnknownSection> {
        names.iter().map(|n| n.parse::<Section>()).collect()
    }

    /// Who makes a settings change, for the audit: the token's name when tokens are
    /// configured (the authorization layer put its [`crate::security::Principal`] into the
    /// request's extensions), otherwise `<transport> <peer address>`.
    pub fn actor(
        extensions: &axum::http::Extensions,
        transport: &str,
        peer: Option<std::net::SocketAddr>,
    ) -> String {
        if let Some(p) = extensions.get::<std::sync::Arc<crate::security::Principal>>() {
            return p.name.clone();
        }
        peer.map_or_else(|| transport.to_owned(), |a| format!("{transport} {a}"))
    }

    /// Apply a settings change: persist (with an audit row) first, then take effect.
    /// `notes` give some of the dismissed sections an end time and a reason (their actor and
    /// time are filled in here). `Ok(None)` when nothing changed.
    pub async fn update_settings(
        &self,
        dismissed: Vec<Section>,
        mut notes: Vec<DismissalNote>,
        actor: &str,
    ) -> Result<Option<Vec<Section>>, Status> {
        let mut wanted = dismissed;
        wanted.sort();
        wanted.dedup();
        let current = self.agg.settings(None).await?;
        if current.dismissed == wanted && notes.is_empty() {
            return Ok(None);
        }
        let now = chrono::Utc::now();
        for n in &mut notes {
            n.actor = actor.to_owned();
            n.at = now;
        }
        self.store
            .save_dismissal_notes(wanted.clone(), notes.clone(), actor.to_owned())
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "saving settings");
                Status::unavailable("the settings could not be saved")
            })?;
        let reasons: Vec<(&str, &str)> = notes
            .iter()
            .map(|n| (n.section.settings_name(), n.reason.as_str()))
            .collect();
        tracing::info!(actor, dismissed = ?wanted, ?reasons, "health settings changed");
        let until = notes
            .iter()
            .filter_map(|n| Some((n.section, n.until?)))
            .collect();
        let applied = self.agg.dismiss(wanted, until).await?;
        Ok(Some(applied.dismissed))
    }

    /// The settings now.
    pub async fn settings(&self) -> Result<SettingsView, Stopped> {
        let now = self.agg.settings(None).await?;
        Ok(self.settings_view(now.dismissed).await)
    }

    /// `dismissed` (as a change applied them) with the notes of those sections (a failed
    /// read of the notes is logged and gives none).
    pub async fn settings_view(&self, dismissed: Vec<Section>) -> SettingsView {
        let notes = match self.store.load_dismissal_notes().await {
            Ok(notes) => notes
                .into_iter()
                .filter(|n| dismissed.contains(&n.section))
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "loading the dismissals' notes");
                Vec::new()
            }
        };
        SettingsView { dismissed, notes }
    }

    /// The notes of a settings change as a surface decoded them, validated against the
    /// dismissed sections ([`App::check_notes`]); the error names the field. Their actor and
    /// time are filled in by [`App::update_settings`].
    pub fn parse_notes(
        wanted: &[Section],
        given: impl IntoIterator<Item = GivenNote>,
    ) -> Result<Vec<DismissalNote>, String> {
        let mut notes = Vec::new();
        for (i, g) in given.into_iter().enumerate() {
            let section = g
                .section
                .parse()
                .map_err(|e| format!("dismissals[{i}].section: {e}"))?;
            notes.push(DismissalNote {
                section,
                until: g.until?,
                reason: g.reason,
                actor: String::new(),
                at: chrono::Utc::now(),
            });
        }
        Self::check_notes(wanted, &notes)?;
        Ok(notes)
    }

    /// Check a change's notes: each names a dismissed section once, ends in the future and
    /// has a reason of at most [`MAX_REASON`] characters. The error names the field.
    pub fn check_notes(dismissed: &[Section], notes: &[DismissalNote]) -> Result<(), String> {
        let now = chrono::Utc::now();
        for (i, n) in notes.iter().enumerate() {
            let name = n.section.settings_name();
            if !dismissed.contains(&n.section) {
                return Err(format!(
                    "dismissals[{i}].section: {name:?} is not in dismissed_healthchecks (expected one of the dismissed sections)"
                ));
            }
            if notes[..i].iter().any(|m| m.section == n.section) {
                return Err(format!("dismissals[{i}].section: {name:?} is listed twice"));
            }
            if let Some(until) = n.until
                && until <= now
            {
                return Err(format!(
                    "dismissals[{i}].until: {} is not in the future (expected a later time)",
                    until.to_rfc3339()
                ));
            }
            if n.reason.chars().count() > MAX_REASON {
                return Err(format!(
                    "dismissals[{i}].reason: {} characters (expected at most {MAX_REASON})",
                    n.reason.chars().count()
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod report_json_tests {
    use std::sync::Arc;

    use vantage_proto::report::{HealthReport, coder_json};

    use super::ReportJson;

    fn report(revision: u64) -> Arc<HealthReport> {
        Arc::new(HealthReport {
            revision,
            ..crate::alerts::model::tests::report()
        })
    }

    #[tokio::test]
    async fn one_encoding_per_report_shared_by_every_reader() {
        let cache = ReportJson::default();
        let first = report(1);
        let a = cache.of(&first).await;
        let b = cache.of(&first).await;
        // The same bytes, not a second encoding.
        assert_eq!(a.as_ptr(), b.as_ptr());
        let second = report(2);
        let c = cache.of(&second).await;
        assert_ne!(a.as_ptr(), c.as_ptr());
        assert_eq!(c, bytes::Bytes::from(coder_json(&*second)));
    }
}
