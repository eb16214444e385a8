//! Child processes under measurement: memory from `/proc/PID/status` (VmRSS, VmHWM), CPU time
//! from `/proc/PID/stat` (utime + stime of the process and its waited-for children), and a stop
//! that ends the whole process group with a deadline.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow};
use serde::Serialize;

/// Memory and CPU of one process at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Usage {
    /// Resident set size, MB.
    pub rss_mb: f64,
    /// Peak resident set size so far, MB.
    pub hwm_mb: f64,
    /// User + system CPU seconds so far.
    pub cpu_seconds: f64,
}

/// The `kB` value of `key:` in a `/proc/PID/status` text.
fn status_kb(status: &str, key: &str) -> Option<f64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
}

/// utime + stime + cutime + cstime in clock ticks from a `/proc/PID/stat` line.
fn stat_ticks(stat: &str) -> Option<u64> {
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3 of the man page, so utime (14) is index 11.
    let get = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    Some(get(11)? + get(12)? + get(13)? + get(14)?)
}

/// Clock ticks per second; Linux exposes 100 to user space on every common architecture.
const TICKS_PER_SECOND: f64 = 100.0;

/// Reads the usage of `pid`.
pub fn usage(pid: u32) -> Result<Usage> {
    let dir = Path::new("/proc").join(pid.to_string());
    let status = std::fs::read_to_string(dir.join("status"))
        .with_context(|| format!("reading /proc/{pid}/status (has the process exited?)"))?;
    let stat = std::fs::read_to_string(dir.join("stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let kb = |k| status_kb(&status, k).ok_or_else(|| anyhow!("no {k} in /proc/{pid}/status"));
    Ok(Usage {
        rss_mb: kb("VmRSS")? / 1024.0,
        hwm_mb: kb("VmHWM")? / 1024.0,
        cpu_seconds: stat_ticks(&stat).ok_or_else(|| anyhow!("cannot parse /proc/{pid}/stat"))?
            as f64
            / TICKS_PER_SECOND,
    })
}

/// A child in its own process group, stopped (group and all) when dropped.
pub struct Proc {
    /// What it is, for messages.
    pub name: String,
    child: Child,
}

impl Proc {
    /// Starts `cmd` in a new process group with stdout and stderr to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Proc> {
        use std::os::unix::process::CommandExt as _;
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .process_group(0);
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        Ok(Proc {
            name: name.to_string(),
            child,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails when the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        match self.child.try_wait()? {
            Some(status) => Err(anyhow!("{} exited early ({status})", self.name)),
            None => Ok(()),
        }
    }

    /// Sends SIGTERM to the group, waits up to `grace`, then SIGKILLs it. Returns whether it
    /// ended within the grace.
    pub fn stop(&mut self, grace: Duration) -> bool {
        let pgid = self.child.id() as i32;
        signal_group(pgid, "TERM");
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                signal_group(pgid, "KILL"); // leftovers of the group
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        signal_group(pgid, "KILL");
        let _ = self.child.wait();
        false
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.stop(Duration::from_secs(2));
        }
    }
}

/// `kill -SIG -PGID` (no libc binding needed for two signals).
fn signal_group(pgid: i32, sig: &str) {
    let _ = Command::new("kill")
        .args([format!("-{sig}"), "--".into(), format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_stat() {
        let status = "Name:\tbootstrap\nVmHWM:\t   12345 kB\nVmRSS:\t    8192 kB\n";
        assert_eq!(status_kb(status, "VmRSS"), Some(8192.0));
        assert_eq!(status_kb(status, "VmHWM"), Some(12345.0));
        assert_eq!(status_kb(status, "VmSwap"), None);
        let stat = "42 (a (weird) name) S 1 42 42 0 -1 4194304 100 0 0 0 7 3 2 1 20 0 1 0";
        assert_eq!(stat_ticks(stat), Some(13));
        assert_eq!(stat_ticks("garbage"), None);
    }

    #[test]
    fn measures_and_stops_a_real_child() {
        let dir = std::env::temp_dir().join(format!("bench-proc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let mut p = Proc::spawn("sleep", cmd, &dir.join("log")).expect("spawn");
        let u = usage(p.pid()).expect("usage");
        assert!(u.rss_mb > 0.0 && u.hwm_mb >= u.rss_mb, "{u:?}");
        p.check_alive().expect("alive");
        assert!(p.stop(Duration::from_secs(5)), "sleep ends on SIGTERM");
        assert!(p.check_alive().is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
