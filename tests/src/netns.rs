//! Linux network namespaces for tests that need more than one network host: namespaces made
//! with `ip netns`, veth pairs created directly inside them (never in the machine's own
//! namespace), bridges, links cut and restored, and commands run inside a namespace.
//!
//! A [`Netns`] owns the namespaces it made: when it is dropped (also while a test panics) it
//! kills every process still inside them and deletes them, which destroys their veths. Every
//! name carries the test process's id, so namespaces left by a test process that was killed
//! outright are recognised and removed by the next [`Netns::new`].

use std::process::Command as StdCommand;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::process::Command;

/// Every namespace a [`Netns`] makes is called `vtns<pid>-<tag>-<name>`.
const PREFIX: &str = "vtns";

/// Why a namespace operation failed: the `ip` command and what it said.
#[derive(Debug)]
pub struct NetnsError(pub String);

impl std::fmt::Display for NetnsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NetnsError {}

/// Run `ip ARGS` to completion; an error names the command and its stderr.
fn ip(args: &[&str]) -> Result<String, NetnsError> {
    let out = StdCommand::new("ip").args(args).output().map_err(|e| {
        NetnsError(format!(
            "running `ip {}`: {e} (is iproute2 installed?)",
            args.join(" ")
        ))
    })?;
    if !out.status.success() {
        return Err(NetnsError(format!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The namespaces that exist now (`ip netns list`, first word of each line).
pub fn list() -> Vec<String> {
    ip(&["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// The processes inside namespace `ns`.
fn pids(ns: &str) -> Vec<String> {
    ip(&["netns", "pids", ns])
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Kill every process inside `ns` (they are the test's own), wait a little for them to go,
/// and delete the namespace.
fn remove(ns: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids = pids(ns);
        if pids.is_empty() || Instant::now() > deadline {
            break;
        }
        let _ = StdCommand::new("kill").arg("-KILL").args(&pids).output();
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = ip(&["netns", "delete", ns]);
}

/// Namespaces left behind by test processes that no longer run.
fn sweep_leftovers() {
    for ns in list() {
        let Some(pid) = ns
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            remove(&ns);
        }
    }
}

/// A set of namespaces owned by one test.
pub struct Netns {
    base: String,
    made: Vec<String>,
    /// The `ip` commands run to build and change the network, see [`Netns::commands`].
    ran: Mutex<Vec<String>>,
}

impl Netns {
    /// A new, empty set; `tag` tells this test's namespaces from other tests' in the process.
    /// Removes namespaces of test processes that died without cleaning up.
    pub fn new(tag: &str) -> Netns {
        sweep_leftovers();
        Netns {
            base: format!("{PREFIX}{}-{tag}", std::process::id()),
            made: Vec::new(),
            ran: Mutex::new(Vec::new()),
        }
    }

    /// Every `ip` command this set ran to build and change its network (not the clean-up), in
    /// order, with the namespaces called by their short names (`ip -n sw link set fra down`):
    /// what an operator types on machines of their own (README's fleet section).
    pub fn commands(&self) -> Vec<String> {
        self.ran.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// `ip ARGS`, remembered for [`Netns::commands`].
    fn ip(&self, args: &[&str]) -> Result<String, NetnsError> {
        let short = args.join(" ").replace(&format!("{}-", self.base), "");
        if let Ok(mut ran) = self.ran.lock() {
            ran.push(format!("ip {short}"));
        }
        ip(args)
    }

    /// The full name of namespace `name` of this set.
    pub fn name(&self, name: &str) -> String {
        format!("{}-{name}", self.base)
    }

    /// The namespaces this set made, full names.
    pub fn names(&self) -> Vec<String> {
        self.made.clone()
    }

    /// Make namespace `name` with its loopback up.
    pub fn add(&mut self, name: &str) -> Result<(), NetnsError> {
        let ns = self.name(name);
        self.ip(&["netns", "add", &ns]).map_err(|e| {
            NetnsError(format!(
                "cannot create network namespace {ns} (the multi-host tests need root and \
                 Linux network namespaces): {e}"
            ))
        })?;
        self.made.push(ns.clone());
        self.ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// A bridge `dev`, up, inside namespace `name`.
    pub fn bridge(&self, name: &str, dev: &str) -> Result<(), NetnsError> {
        let ns = self.name(name);
        self.ip(&["-n", &ns, "link", "add", dev, "type", "bridge"])?;
        self.ip(&["-n", &ns, "link", "set", dev, "up"])?;
        Ok(())
    }

    /// A veth pair made directly in the two namespaces, both ends up: `a` = (namespace, device,
    /// address with prefix length or none), `b` likewise, and `b_master` a bridge of `b`'s
    /// namespace to enslave `b` to.
    pub fn veth(
        &self,
        a: (&str, &str, Option<&str>),
        b: (&str, &str, Option<&str>),
        b_master: Option<&str>,
    ) -> Result<(), NetnsError> {
        let (ans, bns) = (self.name(a.0), self.name(b.0));
        self.ip(&[
            "link", "add", a.1, "netns", &ans, "type", "veth", "peer", "name", b.1, "netns", &bns,
        ])?;
        if let Some(br) = b_master {
            self.ip(&["-n", &bns, "link", "set", b.1, "master", br])?;
        }
        for (ns, dev, addr) in [(&ans, a.1, a.2), (&bns, b.1, b.2)] {
            if let Some(addr) = addr {
                self.ip(&["-n", ns, "addr", "add", addr, "dev", dev])?;
            }
            self.ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(())
    }

    /// Bring device `dev` of namespace `name` up or down (down cuts whatever it links).
    pub fn set_link(&self, name: &str, dev: &str, up: bool) -> Result<(), NetnsError> {
        let state = if up { "up" } else { "down" };
        self.ip(&["-n", &self.name(name), "link", "set", dev, state])?;
        Ok(())
    }

    /// `program` to be run inside namespace `name` (`ip netns exec`, which execs it: the
    /// child's pid is the program's). Killed when dropped.
    pub fn command(&self, name: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name(name)])
            .arg(program)
            .kill_on_drop(true);
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in self.made.drain(..).rev() {
            remove(&ns);
        }
    }
}
