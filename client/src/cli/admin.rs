//! What changes state: forgetting a vantage, dismissals, provisioner heartbeats.

use std::process::ExitCode;

use vantage_client::Client;
use vantage_proto::{Section, pb};

use super::{fail, out, usage};
use crate::{ProvisionerAction, SettingsAction};

/// `vantage vantages forget NAME [--force]`.
pub(crate) async fn forget(client: &Client, name: &str, force: bool) -> ExitCode {
    match client.forget(name, force).await {
        Ok(()) => {
            out(&format!("forgot {name}\n"));
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// `vantage settings [dismiss|undismiss SECTION]`: prints the dismissed sections (after the
/// change, if any).
pub(crate) async fn settings(client: &Client, action: Option<SettingsAction>) -> ExitCode {
    let current = match client.settings().await {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let updated = match action {
        None => current,
        Some(action) => match update_dismissed(client, current, &action).await {
            Ok(s) => s,
            Err(code) => return code,
        },
    };
    let list = &updated.dismissed_healthchecks;
    let mut text = format!(
        "dismissed: {}\n",
        if list.is_empty() {
            "(none)".to_owned()
        } else {
            list.join(", ")
        }
    );
    for d in &updated.dismissals {
        let until = vantage_proto::convert::from_timestamp(d.until.as_ref()).map_or_else(
            || "until undismissed".to_owned(),
            |t| format!("until {}", t.to_rfc3339()),
        );
        text.push_str(&format!(
            "  {}: {until}, by {}: {}\n",
            d.section, d.actor, d.reason
        ));
    }
    out(&text);
    ExitCode::SUCCESS
}

/// Applies a dismiss / undismiss to the `current` settings on the server (keeping the other
/// sections' notes) and returns the new settings, or the exit code of the failure.
async fn update_dismissed(
    client: &Client,
    current: vantage_proto::pb::Settings,
    action: &SettingsAction,
) -> Result<vantage_proto::pb::Settings, ExitCode> {
    let (section, note) = match action {
        SettingsAction::Dismiss {
            section,
            for_,
            reason,
        } => (section, Some((for_, reason))),
        SettingsAction::Undismiss { section } => (section, None),
    };
    let name = match section.parse::<Section>() {
        Ok(s) => s.settings_name().to_owned(),
        Err(e) => return Err(usage(&e.to_string())),
    };
    let mut list: Vec<String> = current
        .dismissed_healthchecks
        .into_iter()
        .filter(|s| *s != name)
        .collect();
    let mut notes: Vec<_> = current
        .dismissals
        .into_iter()
        .filter(|d| d.section != name)
        .collect();
    if let Some((for_, reason)) = note {
        list.push(name.clone());
        let until = match for_ {
            None => None,
            Some(text) => match humantime::parse_duration(text) {
                Ok(d) => chrono::Duration::from_std(d)
                    .ok()
                    .map(|d| vantage_proto::convert::timestamp(chrono::Utc::now() + d)),
                Err(e) => {
                    return Err(usage(&format!(
                        "--for {text:?}: {e} (expected a duration, e.g. 30m or 2h)"
                    )));
                }
            },
        };
        if until.is_some() || reason.is_some() {
            notes.push(vantage_proto::pb::Dismissal {
                section: name,
                until,
                reason: reason.clone().unwrap_or_default(),
                ..Default::default()
            });
        }
    }
    match client.update_settings_with(list, notes).await {
        Ok(s) => Ok(s),
        Err(e) => Err(fail(&e)),
    }
}

/// `vantage provisioner heartbeat`: announces a provisioner daemon.
pub(crate) async fn provisioner(client: &Client, action: ProvisionerAction) -> ExitCode {
    let ProvisionerAction::Heartbeat {
        name,
        version,
        api_version,
        provisioners,
        tags,
    } = action;
    let mut map = std::collections::HashMap::new();
    for t in tags {
        match t.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                map.insert(k.to_owned(), v.to_owned());
            }
            _ => return usage(&format!("--tag: invalid tag {t:?}: expected key=value")),
        }
    }
    let req = pb::ProvisionerHeartbeatRequest {
        name,
        version,
        api_version,
        provisioners,
        tags: map,
        organization_id: None,
    };
    match client.provisioner_heartbeat(req).await {
        Ok(r) => {
            let d = r.daemon.unwrap_or_default();
            out(&format!("heartbeat recorded for {} ({})\n", d.name, d.id));
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}
