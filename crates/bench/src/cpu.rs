//! Where the machine's CPU went during a measurement: the Prefect server, the sandbox, the
//! executions the sandbox ran, the worker under test and the rest, next to how busy the whole
//! machine was. Issue #20 asks why a worker that uses 1 % of a core reaches only 10 % of the
//! server's ceiling; this splits the burst's CPU among the processes that share the 2 cores.
//!
//! Both the server and the sandbox are started with `setsid` (scripts/prefect-server, ./bench),
//! so each is the leader of its own session: a session's CPU is the utime + stime + cutime +
//! cstime of its live members (`/proc/PID/stat`; the children a member reaped are in its
//! cutime/cstime, and a reaped child is no longer listed, so nothing counts twice). The sandbox
//! runs each execution in its own process group of the sandbox's session and reaps it, so the
//! executions are the sandbox session's CPU less the sandbox process's own. The machine's busy
//! time is `/proc/stat`'s first line (everything but idle and iowait).

use std::path::Path;

use serde::Serialize;

use crate::procs::TICKS_PER_SECOND;

/// The two sessions the harness started, by their leaders' pids.
#[derive(Debug, Clone, Copy)]
pub struct Sessions {
    /// `prefect server start` (scripts/prefect-server).
    pub server: u32,
    /// `bootstrap sandbox` (./bench).
    pub sandbox: u32,
}

/// CPU clock ticks at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Snapshot {
    machine_busy: u64,
    server: u64,
    sandbox_own: u64,
    sandbox_session: u64,
}

/// CPU seconds between two snapshots, by whom.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Split {
    /// Wall time between the snapshots, seconds.
    pub wall_seconds: f64,
    /// The whole machine's busy CPU seconds (all cores).
    pub machine_seconds: f64,
    /// machine_seconds / (wall_seconds x cores).
    pub machine_busy_fraction: f64,
    /// The Prefect server's processes.
    pub server_seconds: f64,
    /// The sandbox process itself (the Google APIs, the executor).
    pub sandbox_seconds: f64,
    /// The executions' processes (the flows' stand-ins), reaped by the sandbox.
    pub executions_seconds: f64,
    /// The worker under test (given by the caller; it is measured on its own process).
    pub worker_seconds: f64,
    /// Busy time none of the above accounts for (the harness, the kernel's own work, other
    /// programs on the machine).
    pub other_seconds: f64,
}

/// The fields of a `/proc/PID/stat` line this module needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stat {
    session: u32,
    /// utime + stime.
    pub(crate) own: u64,
    /// cutime + cstime (reaped children).
    pub(crate) children: u64,
}

pub(crate) fn parse_stat(stat: &str) -> Option<Stat> {
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // proc(5) numbers fields from 1 with state as 3: index = field - 3.
    let num = |field: usize| f.get(field - 3).and_then(|v| v.parse::<u64>().ok());
    Some(Stat {
        session: u32::try_from(num(6)?).ok()?,
        own: num(14)? + num(15)?,
        children: num(16)? + num(17)?,
    })
}

/// Busy ticks of all CPUs from `/proc/stat`'s `cpu` line: user, nice, system, irq, softirq and
/// steal (idle and iowait are not busy; guest time is already inside user).
fn parse_machine(proc_stat: &str) -> Option<u64> {
    let line = proc_stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal ...
    Some(v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)? + v.get(7).unwrap_or(&0))
}

/// Sums a session's live members from a `/proc`-shaped directory; also returns the leader's
/// own ticks.
fn session_ticks(proc_dir: &Path, sid: u32) -> (u64, u64) {
    let mut total = 0;
    let mut leader_own = 0;
    let Ok(entries) = std::fs::read_dir(proc_dir) else {
        return (0, 0);
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        // A process may exit between the listing and the read: it is then counted in its
        // parent's cutime at the next snapshot, as it should be.
        let Some(s) = std::fs::read_to_string(e.path().join("stat"))
            .ok()
            .and_then(|t| parse_stat(&t))
        else {
            continue;
        };
        if s.session == sid {
            total += s.own + s.children;
            if pid == sid {
                leader_own = s.own;
            }
        }
    }
    (total, leader_own)
}

impl Snapshot {
    /// Reads the machine and both sessions now.
    pub fn take(s: Sessions) -> Snapshot {
        Snapshot::take_in(Path::new("/proc"), s)
    }

    fn take_in(proc_dir: &Path, s: Sessions) -> Snapshot {
        let machine_busy = std::fs::read_to_string(proc_dir.join("stat"))
            .ok()
            .and_then(|t| parse_machine(&t))
            .unwrap_or(0);
        let (server, _) = session_ticks(proc_dir, s.server);
        let (sandbox_session, sandbox_own) = session_ticks(proc_dir, s.sandbox);
        Snapshot {
            machine_busy,
            server,
            sandbox_own,
            sandbox_session,
        }
    }

    /// What was spent from `self` to `later`, over `wall_seconds` on `cores` CPUs, with the
    /// worker's own CPU seconds measured by the caller.
    pub fn split_to(
        &self,
        later: &Snapshot,
        wall_seconds: f64,
        cores: usize,
        worker_seconds: f64,
    ) -> Split {
        let secs = |a: u64, b: u64| b.saturating_sub(a) as f64 / TICKS_PER_SECOND;
        let machine = secs(self.machine_busy, later.machine_busy);
        let server = secs(self.server, later.server);
        let sandbox = secs(self.sandbox_own, later.sandbox_own);
        let session = secs(self.sandbox_session, later.sandbox_session);
        let executions = (session - sandbox).max(0.0);
        let other = (machine - server - sandbox - executions - worker_seconds).max(0.0);
        Split {
            wall_seconds,
            machine_seconds: machine,
            machine_busy_fraction: if wall_seconds > 0.0 && cores > 0 {
                machine / (wall_seconds * cores as f64)
            } else {
                0.0
            },
            server_seconds: server,
            sandbox_seconds: sandbox,
            executions_seconds: executions,
            worker_seconds,
            other_seconds: other,
        }
    }
}

/// The machine's CPUs (the denominator of busy fractions).
pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat_line(pid: u32, comm: &str, session: u32, t: [u64; 4]) -> String {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
        // utime stime cutime cstime ...
        format!(
            "{pid} ({comm}) S 1 {pid} {session} 0 -1 4194304 10 0 0 0 {} {} {} {} 20 0 1 0",
            t[0], t[1], t[2], t[3]
        )
    }

    #[test]
    fn a_stat_line_with_a_tricky_name_parses() {
        let s = parse_stat(&stat_line(7, "a) b (c", 5, [10, 2, 30, 4])).expect("parses");
        assert_eq!(
            s,
            Stat {
                session: 5,
                own: 12,
                children: 34
            }
        );
        assert_eq!(parse_stat("7 (x) S 1 2"), None);
    }

    #[test]
    fn machine_busy_leaves_out_idle_and_iowait() {
        let t = "cpu  100 5 20 1000 50 3 2 1 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        assert_eq!(parse_machine(t), Some(100 + 5 + 20 + 3 + 2 + 1));
        assert_eq!(parse_machine("intr 1 2\n"), None);
    }

    /// A fake `/proc`: the server session (leader 10 and a uvicorn child 11), the sandbox
    /// session (leader 20, one live execution 21) and an unrelated process.
    fn fake_proc(dir: &Path, busy: u64, server_child: u64, sandbox_children: u64, execution: u64) {
        let write = |pid: u32, line: String| {
            let d = dir.join(pid.to_string());
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("stat"), line).unwrap();
        };
        std::fs::write(dir.join("stat"), format!("cpu  {busy} 0 0 500 7 0 0 0\n")).unwrap();
        write(10, stat_line(10, "prefect", 10, [100, 10, 0, 0]));
        write(11, stat_line(11, "uvicorn", 10, [server_child, 30, 0, 0]));
        write(
            20,
            stat_line(20, "bootstrap", 20, [50, 5, sandbox_children, 0]),
        );
        write(21, stat_line(21, "sh", 20, [execution, 0, 0, 0]));
        write(30, stat_line(30, "other", 30, [999, 0, 0, 0]));
        std::fs::create_dir_all(dir.join("self")).unwrap();
    }

    #[test]
    fn a_split_attributes_sessions_and_leaves_the_rest_to_other() {
        let dir = tempfile::tempdir().unwrap();
        let s = Sessions {
            server: 10,
            sandbox: 20,
        };
        fake_proc(dir.path(), 1000, 300, 0, 0);
        let a = Snapshot::take_in(dir.path(), s);
        assert_eq!(a.server, 440);
        assert_eq!(a.sandbox_own, 55);
        assert_eq!(a.sandbox_session, 55);
        // 2 s later: the server spent 1.0 s more; the sandbox reaped executions worth 0.6 s
        // and one still runs (0.1 s); the machine was busy 3.0 s in all.
        fake_proc(dir.path(), 1300, 400, 60, 10);
        let b = Snapshot::take_in(dir.path(), s);
        let split = a.split_to(&b, 2.0, 2, 0.5);
        assert!((split.machine_seconds - 3.0).abs() < 1e-9, "{split:?}");
        assert!((split.machine_busy_fraction - 0.75).abs() < 1e-9);
        assert!((split.server_seconds - 1.0).abs() < 1e-9);
        assert!(split.sandbox_seconds.abs() < 1e-9);
        assert!((split.executions_seconds - 0.7).abs() < 1e-9);
        assert!((split.other_seconds - (3.0 - 1.0 - 0.7 - 0.5)).abs() < 1e-9);
    }

    #[test]
    fn the_real_proc_reads_and_counts_our_own_session() {
        // This test's own session is live: its leader's CPU is at least this process's.
        let me = std::process::id();
        let stat = std::fs::read_to_string(format!("/proc/{me}/stat")).unwrap();
        let sid = parse_stat(&stat).expect("our own stat parses").session;
        let snap = Snapshot::take(Sessions {
            server: sid,
            sandbox: sid,
        });
        assert!(snap.machine_busy > 0);
        assert!(snap.server >= snap.sandbox_own);
    }
}
