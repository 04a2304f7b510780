//! The health-code catalogue: every code vantage emits, Coder's and its own, with the text that
//! the server serves at `/health/codes#<lower-case code>`.

/// One documented code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeDoc {
    pub code: &'static str,
    pub section: &'static str,
    pub title: &'static str,
    pub description: &'static str,
}

pub const EUNKNOWN: &str = "EUNKNOWN";
pub const EACS01: &str = "EACS01";
pub const EACS02: &str = "EACS02";
pub const EACS03: &str = "EACS03";
pub const EACS04: &str = "EACS04";
pub const EDB01: &str = "EDB01";
pub const EDB02: &str = "EDB02";
pub const EDB03: &str = "EDB03";
pub const EWS01: &str = "EWS01";
pub const EWS02: &str = "EWS02";
pub const EWS03: &str = "EWS03";
pub const EDERP01: &str = "EDERP01";
pub const EDERP02: &str = "EDERP02";
pub const EDERP03: &str = "EDERP03";
pub const EDERP04: &str = "EDERP04";
pub const EDERP05: &str = "EDERP05";
pub const ESTUN01: &str = "ESTUN01";
pub const ESTUN02: &str = "ESTUN02";
pub const EWP01: &str = "EWP01";
pub const EWP02: &str = "EWP02";
pub const EWP04: &str = "EWP04";
pub const EPD01: &str = "EPD01";
pub const EPD02: &str = "EPD02";
pub const EPD03: &str = "EPD03";
pub const EVNT01: &str = "EVNT01";
pub const EVNT02: &str = "EVNT02";
pub const EVNT03: &str = "EVNT03";
pub const EVNT04: &str = "EVNT04";
pub const EVNT05: &str = "EVNT05";
pub const ECDR01: &str = "ECDR01";
pub const ECDR02: &str = "ECDR02";
pub const ECDR03: &str = "ECDR03";
pub const ECDR04: &str = "ECDR04";
pub const ECDR05: &str = "ECDR05";

/// Every code, in documentation order.
pub const CATALOGUE: &[CodeDoc] = &[
    CodeDoc {
        code: EUNKNOWN,
        section: "any",
        title: "Unexpected failure",
        description: "A check failed in a way it does not expect (for example a panic inside the check, an invalid provisioner version). vantage reports it at error severity, never as ok. Look at the message and at the logs of the vantage that reported it.",
    },
    CodeDoc {
        code: EACS01,
        section: "AccessURL",
        title: "Access URL not set",
        description: "No access URL is configured. Set --access-url (VANTAGE_ACCESS_URL) on vantaged; probes check the URL the server assigns.",
    },
    CodeDoc {
        code: EACS02,
        section: "AccessURL",
        title: "Access URL invalid",
        description: "The access URL cannot be resolved against /healthz. Check that it is an absolute http:// or https:// URL.",
    },
    CodeDoc {
        code: EACS03,
        section: "AccessURL",
        title: "Failed to fetch /healthz",
        description: "The GET of <access URL>/healthz failed before a response arrived (DNS, connection refused, TLS verification, or the 5 s timeout), or its body could not be read. Check that the access URL is reachable from the vantage that reports it; a self-signed certificate needs the CA given to the probe.",
    },
    CodeDoc {
        code: EACS04,
        section: "AccessURL",
        title: "/healthz did not return 200 OK",
        description: "The access URL answered, but not with 200. A reverse proxy or load balancer in front of the deployment is the usual cause. This is a warning, but it makes the report's `healthy` false, as in Coder.",
    },
    CodeDoc {
        code: EDB01,
        section: "Database",
        title: "Database ping failed",
        description: "One of the five pings of the database failed or the 5 s budget ran out. Check that PostgreSQL is up and reachable from vantaged.",
    },
    CodeDoc {
        code: EDB02,
        section: "Database",
        title: "Database ping is slow",
        description: "The median of five pings, in whole milliseconds, is at or above the threshold (--database-threshold, default 15 ms).",
    },
    CodeDoc {
        code: EDB03,
        section: "Database",
        title: "No database configured",
        description: "vantaged runs with its in-memory store: settings, vantages and event history are lost on restart, and replicas cannot share state. Give --database-url to keep them.",
    },
    CodeDoc {
        code: EWS01,
        section: "Websocket",
        title: "Websocket dial failed",
        description: "The WebSocket handshake with <access URL>/api/v2/debug/ws failed. A proxy that does not pass WebSocket upgrades is the usual cause; the section shows the HTTP status and body it got.",
    },
    CodeDoc {
        code: EWS02,
        section: "Websocket",
        title: "Websocket echo failed",
        description: "Writing or reading an echo message failed after the connection was established (the connection was closed or timed out).",
    },
    CodeDoc {
        code: EWS03,
        section: "Websocket",
        title: "Websocket echo was wrong",
        description: "The echo endpoint answered with a different message or message type than was sent.",
    },
    CodeDoc {
        code: EDERP01,
        section: "DERP",
        title: "DERP node uses WebSockets",
        description: "The relay refused `Upgrade: DERP` and the client fell back to WebSockets. Traffic still flows, but slower; configure the load balancer to pass the DERP upgrade.",
    },
    CodeDoc {
        code: EDERP02,
        section: "DERP",
        title: "One node of a region is unhealthy",
        description: "A region with several nodes has exactly one unhealthy node: the region still works, but with less capacity.",
    },
    CodeDoc {
        code: EDERP03,
        section: "DERP",
        title: "No DERP nodes",
        description: "The effective DERP map has no DERP-capable node: clients have no relay to fall back to. Enable the embedded relay or give a DERP map.",
    },
    CodeDoc {
        code: EDERP04,
        section: "DERP",
        title: "A DERP region is unhealthy",
        description: "vantage's code for the alerts of a DERP region at warning or error because its nodes fail without a code of their own (a node that cannot connect, relay messages or answer STUN). It is not a message of the report: the alert's description lists each failing node's error and the vantages that see it. Check the relay process, its port and the network path from those vantages.",
    },
    CodeDoc {
        code: EDERP05,
        section: "DERP",
        title: "The DERP map cannot be read",
        description: "vantaged could not read the configured DERP map (--derp-map: the URL did not answer with a valid map, or the file is missing or invalid) when it last tried. It keeps checking the last map it read (at start: only the embedded relay and the STUN servers) and tries again every --derp-map-refresh; the warning clears once a read succeeds. The message says what failed: fix the URL or the file, or the server that serves it.",
    },
    CodeDoc {
        code: ESTUN01,
        section: "DERP",
        title: "No STUN server answered",
        description: "STUN is configured on at least one node, but no STUN server answered: direct connections cannot be established.",
    },
    CodeDoc {
        code: ESTUN02,
        section: "DERP",
        title: "STUN mapped addresses vary",
        description: "STUN servers saw different public addresses for the same vantage: it is probably behind a hard NAT, so direct connections are unlikely.",
    },
    CodeDoc {
        code: EWP01,
        section: "WorkspaceProxy",
        title: "Proxy health update failed",
        description: "Refreshing the workspace proxies' health failed.",
    },
    CodeDoc {
        code: EWP02,
        section: "WorkspaceProxy",
        title: "Proxy fetch failed",
        description: "The list of workspace proxies could not be read from the store.",
    },
    CodeDoc {
        code: EWP04,
        section: "WorkspaceProxy",
        title: "A workspace proxy is unhealthy",
        description: "A workspace proxy reported errors or warnings at its /healthz-report, or could not be reached.",
    },
    CodeDoc {
        code: EPD01,
        section: "ProvisionerDaemons",
        title: "No active provisioner daemons",
        description: "The deployment requires provisioner daemons, and none has sent a heartbeat in the last 90 s.",
    },
    CodeDoc {
        code: EPD02,
        section: "ProvisionerDaemons",
        title: "Provisioner version mismatch",
        description: "A provisioner daemon's vMAJOR.MINOR differs from the server's version. Upgrade the daemon.",
    },
    CodeDoc {
        code: EPD03,
        section: "ProvisionerDaemons",
        title: "Provisioner API version deprecated",
        description: "A provisioner daemon speaks a different major API version than the server.",
    },
    CodeDoc {
        code: EVNT01,
        section: "vantages",
        title: "A vantage is stale",
        description: "A probe has not reported within stale_after (default 3 × its interval). Its results left the aggregate. Check the probe process and its connection to vantaged; `vantage vantages forget NAME` removes a decommissioned probe.",
    },
    CodeDoc {
        code: EVNT02,
        section: "any",
        title: "A target has no fresh vantage",
        description: "No fresh vantage covers this target, so nothing currently checks it. Deploy or restart a probe of the target's region.",
    },
    CodeDoc {
        code: EVNT03,
        section: "any",
        title: "Failure below quorum",
        description: "Fewer than `quorum` vantages see this failure, so it does not set the section's severity; the message names the vantages that see it.",
    },
    CodeDoc {
        code: EVNT04,
        section: "any",
        title: "A vantage lost observations",
        description: "A probe dropped observations from its replay buffer before the server acknowledged them (the server stops acknowledging while its store falls behind, so nothing acknowledged is ever lost; what the probe could not keep is). The message names the vantage and the count. Look at the database's health and at the server's write queue in /metrics; a larger --replay-buffer on the probe rides out longer outages.",
    },
    CodeDoc {
        code: EVNT05,
        section: "any",
        title: "The report was cut to its bound",
        description: "The report's JSON would have been larger than its bound (64 MiB): the per-vantage section reports are left out, the aggregates, their warnings and the vantage list stay. The message gives the size it would have had. Every vantage's view is still in /metrics, Watch and the history; fewer vantages, fewer assigned DERP regions or smaller bodies bring the report back under the bound.",
    },
    CodeDoc {
        code: ECDR01,
        section: "coder",
        title: "Coder unreachable",
        description: "vantaged could not reach the Coder deployment given with --coder-url, or it answered with a 5xx status. The last inventory imported is kept (its time is imported_at) until Coder answers again. Check the URL and that coderd is up.",
    },
    CodeDoc {
        code: ECDR02,
        section: "coder",
        title: "Coder refused the token",
        description: "Coder answered 401: the token given with --coder-token (or [coder] token / token_file) is missing, expired or revoked. Mint a new one with `coder tokens create` and restart vantaged with it. The last inventory imported is kept meanwhile.",
    },
    CodeDoc {
        code: ECDR03,
        section: "coder",
        title: "The token lacks a permission vantage needs",
        description: "Coder answered 403 for a part of the inventory the deployment has and vantage needs (the DERP map, the provisioner daemons, the workspace proxies); the message names the endpoint and what the token lacks. Use a token of a user with a role that may read it.",
    },
    CodeDoc {
        code: ECDR04,
        section: "coder",
        title: "A coderd replica reports an error",
        description: "GET /api/v2/replicas lists a replica whose error is set (typically a failed mesh dial between replicas). The message names the replica and its error.",
    },
    CodeDoc {
        code: ECDR05,
        section: "coder",
        title: "Coder and the probes disagree about a workspace proxy",
        description: "Coder's own status of a workspace proxy differs from what the probes of its region saw (one says ok, the other does not). Look at both: the proxy may be reachable from coderd but not from the region, or the other way round.",
    },
];

/// The documentation of `code`, if it is in the catalogue.
pub fn lookup(code: &str) -> Option<&'static CodeDoc> {
    CATALOGUE.iter().find(|d| d.code.eq_ignore_ascii_case(code))
}

/// Where a code is documented, relative to the server's base URL.
pub fn docs_path(code: &str) -> String {
    let code = if code.is_empty() { EUNKNOWN } else { code };
    format!("/health/codes#{}", code.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_is_unique_and_complete() {
        let mut seen = std::collections::HashSet::new();
        for d in CATALOGUE {
            assert!(seen.insert(d.code), "duplicate {}", d.code);
            assert!(!d.description.is_empty());
        }
        assert!(lookup("eacs04").is_some());
        assert_eq!(docs_path("EACS04"), "/health/codes#eacs04");
        assert_eq!(docs_path(""), "/health/codes#eunknown");
    }
}
