//! Processes of this workspace: where cargo put a binary, and a child that announces where it
//! serves on its first stdout line.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A binary of this workspace beside the running executable: `target/<profile>/<name>`, whether
/// the caller is a binary there or a test in `target/<profile>/deps/`. `NotFound` when it is
/// not built (the caller says how to build it).
pub fn cargo_bin(name: &str) -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().map(Path::to_path_buf);
    while let Some(d) = dir {
        let candidate = d.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
        if d.file_name().is_some_and(|n| n == "target") {
            break;
        }
        dir = d.parent().map(Path::to_path_buf);
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("{name} is not built beside {}", exe.display()),
    ))
}

/// How long a child may take to print its readiness line.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// A child process that printed its base URL (or address) as its first stdout line; killed
/// when dropped. Its stdout keeps being drained so it never blocks on a full pipe.
pub struct ReadyChild {
    pub child: Child,
    pub url: String,
}

/// Why a [`ReadyChild`] did not become ready.
#[derive(Debug)]
pub enum ReadyError {
    /// It could not be started.
    Spawn {
        what: String,
        source: std::io::Error,
    },
    /// Its stdout could not be read.
    Read {
        what: String,
        source: std::io::Error,
    },
    /// It printed nothing within 30 s.
    Silent { what: String },
    /// It exited (closed stdout) before printing a line: e.g. a port it was told was taken.
    Exited { what: String },
}

impl std::fmt::Display for ReadyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadyError::Spawn { what, source } => write!(f, "starting {what}: {source}"),
            ReadyError::Read { what, source } => write!(f, "reading {what}'s stdout: {source}"),
            ReadyError::Silent { what } => write!(
                f,
                "{what} printed no readiness line within {}s",
                READY_WITHIN.as_secs()
            ),
            ReadyError::Exited { what } => write!(f, "{what} exited before its readiness line"),
        }
    }
}

impl std::error::Error for ReadyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ReadyError::Spawn { source, .. } | ReadyError::Read { source, .. } => Some(source),
            ReadyError::Silent { .. } | ReadyError::Exited { .. } => None,
        }
    }
}

impl ReadyChild {
    /// Spawn `cmd` (stdout piped, killed on drop) and wait (bounded: 30 s) for its first stdout
    /// line. `what` names it in errors.
    pub async fn spawn(mut cmd: Command, what: &str) -> Result<ReadyChild, ReadyError> {
        cmd.stdout(Stdio::piped()).kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|source| ReadyError::Spawn {
            what: what.to_owned(),
            source,
        })?;
        let Some(stdout) = child.stdout.take() else {
            return Err(ReadyError::Exited {
                what: what.to_owned(),
            });
        };
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(READY_WITHIN, lines.next_line())
            .await
            .map_err(|_| ReadyError::Silent {
                what: what.to_owned(),
            })?
            .map_err(|source| ReadyError::Read {
                what: what.to_owned(),
                source,
            })?
            .ok_or_else(|| ReadyError::Exited {
                what: what.to_owned(),
            })?;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(ReadyChild {
            child,
            url: line.trim().to_owned(),
        })
    }

    /// Its process id, or an error once it has exited.
    pub fn pid(&self) -> std::io::Result<u32> {
        self.child
            .id()
            .ok_or_else(|| std::io::Error::other("the child has exited"))
    }

    /// SIGKILL it and reap it.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}
