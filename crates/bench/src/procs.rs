//! Child processes under measurement: memory from `/proc/PID/status` (VmRSS, VmHWM), CPU time
//! from `/proc/PID/stat` (utime + stime of the process and its waited-for children), and a stop
//! that ends the whole process group with a deadline.
//!
//! The workers the harness starts die with it, however it ends: a normal end or an error
//! drops their [`Proc`] (which stops the group); SIGTERM, SIGINT and SIGHUP stop every live
//! group before the harness exits ([`stop_children_on_signal`]); a panic does too (the hook of
//! [`stop_children_on_panic`]); and SIGKILL, which no handler sees, reaches each worker itself
//! through `PR_SET_PDEATHSIG` (the kernel sends it SIGKILL when the harness is gone; only the
//! worker process itself, not what it started, so the other ways come first). Found when a
//! stopped bench left prefect-gcp's worker polling the server.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock, mpsc};
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

/// utime + stime + cutime + cstime in clock ticks from a `/proc/PID/stat` line (one parser
/// for the stat line: [`crate::cpu`]'s).
fn stat_ticks(stat: &str) -> Option<u64> {
    crate::cpu::parse_stat(stat).map(|s| s.own + s.children)
}

/// Clock ticks per second; Linux exposes 100 to user space on every common architecture.
pub(crate) const TICKS_PER_SECOND: f64 = 100.0;

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

/// The process groups of the live [`Proc`]s (a group's id is its leader's pid).
static GROUPS: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

fn groups() -> std::sync::MutexGuard<'static, BTreeSet<i32>> {
    // A panic while the lock was held leaves the set as it was: still the right set.
    GROUPS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Ends every live group: SIGTERM, up to `grace` for them to go, then SIGKILL. For the
/// harness's last moments (a signal, a panic), when no `Proc` will be dropped.
pub fn stop_all(grace: Duration) {
    let live: Vec<i32> = groups().iter().copied().collect();
    for g in &live {
        signal_group(*g, libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && live.iter().any(|g| group_alive(*g)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    for g in &live {
        signal_group(*g, libc::SIGKILL);
    }
}

/// Stops every live group when the harness gets SIGTERM, SIGINT or SIGHUP, then exits with
/// 128 + the signal (as a shell reports it). Call once, inside the runtime.
pub fn stop_children_on_signal() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    let mut hup = signal(SignalKind::hangup()).context("listening for SIGHUP")?;
    tokio::spawn(async move {
        let sig = tokio::select! {
            _ = term.recv() => libc::SIGTERM,
            _ = int.recv() => libc::SIGINT,
            _ = hup.recv() => libc::SIGHUP,
        };
        eprintln!("bootstrap-bench: signal {sig}: stopping the workers it started");
        tokio::task::spawn_blocking(|| stop_all(Duration::from_secs(2)))
            .await
            .ok();
        std::process::exit(128 + sig);
    });
    Ok(())
}

/// Stops every live group when any thread of the harness panics (after the default report).
/// A panic in a task would otherwise leave a worker running until the harness ends.
pub fn stop_children_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        stop_all(Duration::from_secs(2));
    }));
}

/// A job for the spawner thread: a command and where its child goes.
type SpawnJob = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawns `cmd` from one thread that lives as long as the harness. `PR_SET_PDEATHSIG` fires
/// when the *thread* that forked the child ends, not the process (prctl(2)): a child forked
/// from a runtime's blocking-pool thread would be killed when that thread idles out.
fn spawn_from_lasting_thread(cmd: Command) -> Result<Child> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnJob>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("bench-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("starting the spawner thread");
        tx
    });
    let (reply, child) = mpsc::channel();
    spawner
        .send((cmd, reply))
        .map_err(|_| anyhow!("the spawner thread is gone"))?;
    Ok(child
        .recv()
        .map_err(|_| anyhow!("the spawner thread is gone"))??)
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
        let harness = std::process::id() as libc::pid_t;
        // SAFETY: between fork and exec only async-signal-safe calls (prctl, getppid, _exit).
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The harness died between fork and prctl: nothing will signal this child.
                if libc::getppid() != harness {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        // The group is registered under the lock the stop paths take, so a signal arriving
        // right after the spawn still finds it.
        let mut live = groups();
        let child = spawn_from_lasting_thread(cmd).with_context(|| format!("starting {name}"))?;
        live.insert(child.id() as i32);
        drop(live);
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
        signal_group(pgid, libc::SIGTERM);
        let deadline = Instant::now() + grace;
        let mut ended = false;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                ended = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Leftovers of the group, or the leader that ignored SIGTERM.
        signal_group(pgid, libc::SIGKILL);
        if !ended {
            let _ = self.child.wait();
        }
        groups().remove(&pgid);
        ended
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.stop(Duration::from_secs(2));
        }
    }
}

/// `kill(-pgid, sig)`; a group already gone is not an error.
fn signal_group(pgid: i32, sig: libc::c_int) {
    if pgid > 1 {
        // SAFETY: kill(2) with a negative pid signals that process group; no memory involved.
        unsafe {
            libc::kill(-pgid, sig);
        }
    }
}

/// Whether any process of the group is left. Its leader is the harness's child: reap it if
/// it has exited (a zombie still counts as a member of the group).
fn group_alive(pgid: i32) -> bool {
    if pgid <= 1 {
        return false;
    }
    // SAFETY: waitpid on our own child (the group's leader), without blocking; kill with
    // signal 0 only checks that the group exists.
    unsafe {
        libc::waitpid(pgid, std::ptr::null_mut(), libc::WNOHANG);
        libc::kill(-pgid, 0) == 0
    }
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
        assert!(groups().contains(&(p.pid() as i32)));
        assert!(p.stop(Duration::from_secs(5)), "sleep ends on SIGTERM");
        assert!(p.check_alive().is_err());
        assert!(
            !groups().contains(&(p.pid() as i32)),
            "a stopped group is forgotten"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    /// The variable that turns this test binary into a stand-in harness (see [`harness`]).
    const HARNESS: &str = "BENCH_PROCS_TEST_HARNESS";

    /// The stand-in harness, run by the tests below in a child copy of this test binary:
    /// installs the harness's signal and panic handling, starts a "worker" (a shell that
    /// starts a `sleep` of its own in its group, as `ip netns exec` and Python's workers start
    /// processes), prints both pids, then per `mode` waits to be signalled or panics in a task
    /// (and lives on, so only the panic hook can stop the worker).
    fn harness(mode: &str) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            stop_children_on_signal().expect("signal handling");
            stop_children_on_panic();
            let dir = std::env::temp_dir().join(format!("bench-harness-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("dir");
            let mut cmd = Command::new("sh");
            // The shell waits on its sleep (a SIGTERM to the group ends both).
            cmd.args([
                "-c",
                "sleep 300 & echo \"grandchild=$!\" > \"$0\"; wait",
                &dir.join("gc").to_string_lossy(),
            ]);
            let p = Proc::spawn("worker", cmd, &dir.join("log")).expect("spawn");
            let gc_file = dir.join("gc");
            let deadline = Instant::now() + Duration::from_secs(10);
            let grandchild = loop {
                if let Some(pid) = std::fs::read_to_string(&gc_file)
                    .ok()
                    .and_then(|t| t.trim().strip_prefix("grandchild=")?.parse::<u32>().ok())
                {
                    break pid;
                }
                assert!(
                    Instant::now() < deadline,
                    "the shell did not start its sleep"
                );
                std::thread::sleep(Duration::from_millis(20));
            };
            let _ = std::fs::remove_dir_all(&dir);
            println!("worker={} grandchild={grandchild}", p.pid());
            // Neither a return nor unwinding may stop it: only the handlers under test.
            std::mem::forget(p);
            if mode == "panic" {
                let _ = tokio::spawn(async { panic!("a harness bug") }).await;
            }
            tokio::time::sleep(Duration::from_secs(60)).await;
        });
    }

    /// Whether `pid` is a live process (not gone, not a zombie waiting to be reaped).
    fn running(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                let state = s[s.rfind(')')? + 1..]
                    .split_whitespace()
                    .next()?
                    .to_string();
                Some(state != "Z" && state != "X")
            })
            .unwrap_or(false)
    }

    /// Starts this test binary as a stand-in harness in `mode`, running `test`; returns it and
    /// the pids of its worker and the worker's own child.
    fn start_harness(test: &str, mode: &str) -> (Child, u32, u32) {
        use std::io::BufRead as _;
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(HARNESS, mode)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the stand-in harness");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = std::io::BufReader::new(stdout).lines();
        let (worker, grandchild) = loop {
            let line = lines
                .next()
                .expect("the harness printed its worker's pid")
                .expect("line");
            let mut pids = line.split_whitespace().filter_map(|f| {
                f.strip_prefix("worker=")
                    .or_else(|| f.strip_prefix("grandchild="))?
                    .parse::<u32>()
                    .ok()
            });
            if let (Some(w), Some(g)) = (pids.next(), pids.next()) {
                break (w, g);
            }
        };
        // Keep the pipe drained so the harness never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        assert!(running(worker) && running(grandchild));
        (child, worker, grandchild)
    }

    /// Whether all of `pids` end within `within`; those that do not are killed (a failing
    /// test leaves nothing running).
    fn wait_gone(pids: &[u32], within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if pids.iter().all(|p| !running(*p)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for p in pids {
            // SAFETY: signals processes this test started.
            unsafe { libc::kill(*p as i32, libc::SIGKILL) };
        }
        false
    }

    /// Regression: a SIGTERM to bootstrap-bench left the workers it had started running
    /// (prefect-gcp's worker polled on). Now the whole group goes, the worker's own children
    /// with it, and the harness exits 143.
    #[test]
    fn workers_die_when_the_harness_is_terminated() {
        if let Ok(mode) = std::env::var(HARNESS) {
            return harness(&mode);
        }
        for (sig, code) in [(libc::SIGTERM, 143), (libc::SIGINT, 130)] {
            let (mut h, worker, grandchild) = start_harness(
                "procs::tests::workers_die_when_the_harness_is_terminated",
                "wait",
            );
            // SAFETY: signals our own child.
            unsafe { libc::kill(h.id() as i32, sig) };
            let status = h.wait().expect("harness exits");
            assert_eq!(status.code(), Some(code), "signal {sig}");
            assert!(
                wait_gone(&[worker, grandchild], Duration::from_secs(10)),
                "signal {sig}: the worker or its child outlived the harness"
            );
        }
    }

    /// SIGKILL reaches no handler: the worker dies through PR_SET_PDEATHSIG.
    #[test]
    fn the_worker_dies_when_the_harness_is_killed() {
        if let Ok(mode) = std::env::var(HARNESS) {
            return harness(&mode);
        }
        let (mut h, worker, grandchild) = start_harness(
            "procs::tests::the_worker_dies_when_the_harness_is_killed",
            "wait",
        );
        h.kill().expect("SIGKILL");
        h.wait().expect("reaped");
        let gone = wait_gone(&[worker], Duration::from_secs(10));
        // What the worker started is beyond PR_SET_PDEATHSIG (it watches the harness only);
        // the test cleans it up.
        // SAFETY: signals a process this test started.
        unsafe { libc::kill(grandchild as i32, libc::SIGKILL) };
        assert!(gone, "the worker outlived a killed harness");
    }

    /// A panic in a task leaves the harness running (the runtime catches it), so only the
    /// panic hook can stop the workers; it does.
    #[test]
    fn workers_die_when_the_harness_panics() {
        if let Ok(mode) = std::env::var(HARNESS) {
            return harness(&mode);
        }
        let (mut h, worker, grandchild) =
            start_harness("procs::tests::workers_die_when_the_harness_panics", "panic");
        let gone = wait_gone(&[worker, grandchild], Duration::from_secs(10));
        let still_running = h.try_wait().expect("try_wait").is_none();
        let _ = h.kill();
        let _ = h.wait();
        assert!(gone, "the worker outlived a panic of the harness");
        assert!(
            still_running,
            "the harness itself lived on: the hook did it"
        );
    }
}
