//! Gives back the executable's pages that only start-up used.
//!
//! Measured (BENCHMARKS.md, "The worker's idle memory"): of the idle worker's 15-18 MB RSS, about
//! 2 MB are heap, stacks and malloc arenas and the rest are pages of the `bootstrap` binary
//! itself, mapped while start-up ran argument parsing, configuration, TLS and client set-up,
//! plus the neighbours the kernel maps around every page fault (fault-around, 64-80 KB per fault
//! here). Of 11 MB of resident code, 1.3 MB were touched in 25 s of idle polling. Those pages
//! stay mapped for the life of the process although nothing uses them again.
//!
//! [`release_startup_code`] unmaps them (`madvise(MADV_DONTNEED)`) once the worker is running:
//! only read-only, private mappings of the executable without a single copy-on-write page, so
//! their content is the file's and a page touched again is mapped back from the page cache (a
//! minor fault), with the same bytes. Writable mappings (`.data`, `.bss`) and the relocated
//! read-only data (RELRO, which holds copy-on-write pages) are never touched.

use std::io;

/// What was given back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Released {
    /// Mappings of the executable that were released.
    pub mappings: usize,
    /// Bytes that were resident in them.
    pub bytes: u64,
}

/// One mapping of `/proc/self/smaps` that may be released.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mapping {
    start: usize,
    end: usize,
    rss_kb: u64,
}

/// The mappings of the file with inode `inode` that [`release_startup_code`] may drop: private
/// (`p`), not writable, not locked, and without anonymous (copy-on-write) pages.
fn releasable(smaps: &str, inode: u64) -> Vec<Mapping> {
    struct Current {
        start: usize,
        end: usize,
        candidate: bool,
        rss_kb: u64,
        anon_kb: u64,
        locked: bool,
    }
    fn finish(c: Option<Current>, out: &mut Vec<Mapping>) {
        if let Some(c) = c
            && c.candidate
            && c.anon_kb == 0
            && !c.locked
        {
            out.push(Mapping {
                start: c.start,
                end: c.end,
                rss_kb: c.rss_kb,
            });
        }
    }
    let kb = |rest: &str| -> u64 {
        rest.split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(u64::MAX) // unparsable: treated as not releasable below
    };
    let mut out = Vec::new();
    let mut cur: Option<Current> = None;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or("");
        if let Some((s, e)) = first.split_once('-')
            && let (Ok(start), Ok(end)) =
                (usize::from_str_radix(s, 16), usize::from_str_radix(e, 16))
        {
            finish(cur.take(), &mut out);
            let perms = fields.next().unwrap_or("");
            let _offset = fields.next();
            let _dev = fields.next();
            let ino = fields.next().and_then(|i| i.parse::<u64>().ok());
            let p = perms.as_bytes();
            let candidate = p.len() == 4 && p[0] == b'r' && p[1] == b'-' && p[3] == b'p';
            cur = Some(Current {
                start,
                end,
                candidate: candidate && ino == Some(inode) && inode != 0,
                rss_kb: 0,
                anon_kb: u64::MAX, // a mapping whose `Anonymous:` line is missing is kept
                locked: false,
            });
            continue;
        }
        let Some(c) = cur.as_mut() else { continue };
        let rest = line[first.len()..].trim();
        match first {
            "Rss:" => c.rss_kb = kb(rest).min(1 << 40),
            "Anonymous:" => c.anon_kb = kb(rest),
            "Locked:" => c.locked |= kb(rest) != 0,
            "VmFlags:" => c.locked |= rest.split_whitespace().any(|f| f == "lo"),
            _ => {}
        }
    }
    finish(cur, &mut out);
    out
}

/// Unmaps the pages of this process's executable that are resident but unused since start-up
/// (see the module's documentation). Pages used later come back on their own.
#[cfg(target_os = "linux")]
pub fn release_startup_code() -> io::Result<Released> {
    use std::os::unix::fs::MetadataExt as _;
    // `/proc/self/exe` is the file that is mapped, even when its path was replaced since.
    let inode = std::fs::metadata("/proc/self/exe")?.ino();
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut released = Released {
        mappings: 0,
        bytes: 0,
    };
    for m in releasable(&smaps, inode) {
        // SAFETY: `m` is a private, read-only mapping of the executable (mapped for the life of
        // the process, never unmapped or remapped) holding no anonymous page: every page in it
        // is the file's content, so MADV_DONTNEED only drops page-table entries, and the next
        // access maps the same bytes back from the file. No memory Rust refers to changes.
        let rc = unsafe {
            libc::madvise(
                m.start as *mut libc::c_void,
                m.end - m.start,
                libc::MADV_DONTNEED,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        released.mappings += 1;
        released.bytes = released.bytes.saturating_add(m.rss_kb.saturating_mul(1024));
    }
    Ok(released)
}

/// Elsewhere nothing is released.
#[cfg(not(target_os = "linux"))]
pub fn release_startup_code() -> io::Result<Released> {
    Ok(Released {
        mappings: 0,
        bytes: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0a0000000-55d0a0400000 r--p 00000000 fd:01 4242  /usr/bin/bootstrap
Rss:                2048 kB
Anonymous:             0 kB
Locked:                0 kB
VmFlags: rd mr mw me dw sd
55d0a0400000-55d0a1300000 r-xp 00400000 fd:01 4242  /usr/bin/bootstrap
Rss:               11236 kB
Anonymous:             0 kB
Locked:                0 kB
VmFlags: rd ex mr mw me dw sd
55d0a1300000-55d0a1400000 r--p 01300000 fd:01 4242  /usr/bin/bootstrap
Rss:                 600 kB
Anonymous:           600 kB
Locked:                0 kB
VmFlags: rd mr mw me dw ac sd
55d0a1400000-55d0a1410000 rw-p 01400000 fd:01 4242  /usr/bin/bootstrap
Rss:                  40 kB
Anonymous:            12 kB
VmFlags: rd wr mr mw me dw ac sd
55d0a1500000-55d0a1600000 r-xp 00000000 fd:01 77  /usr/lib/libc.so.6
Rss:                 984 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me sd
55d0a1700000-55d0a1800000 r-xp 00000000 fd:01 4242  /usr/bin/bootstrap
Rss:                  64 kB
Anonymous:             0 kB
Locked:               64 kB
VmFlags: rd ex mr mw me lo sd
7ffd00000000-7ffd00020000 rw-p 00000000 00:00 0  [stack]
Rss:                 148 kB
Anonymous:           148 kB
VmFlags: rd wr mr mw me gd ac
";

    #[test]
    fn only_clean_read_only_private_mappings_of_the_executable_are_releasable() {
        let got = releasable(SMAPS, 4242);
        assert_eq!(
            got,
            vec![
                Mapping {
                    start: 0x55d0a0000000,
                    end: 0x55d0a0400000,
                    rss_kb: 2048
                },
                Mapping {
                    start: 0x55d0a0400000,
                    end: 0x55d0a1300000,
                    rss_kb: 11236
                },
            ],
            "RELRO (anonymous pages), .data (writable), another file and a locked mapping stay"
        );
        assert!(
            releasable(SMAPS, 0).is_empty(),
            "anonymous memory is never a candidate"
        );
        assert!(releasable(SMAPS, 999).is_empty());
    }

    #[test]
    fn a_mapping_without_an_anonymous_line_is_kept() {
        let smaps = "55d0a0000000-55d0a0400000 r-xp 00000000 fd:01 4242  /bin/x\nRss: 100 kB\n";
        assert!(releasable(smaps, 4242).is_empty());
    }

    /// Resident kB of this test binary's releasable mappings.
    #[cfg(target_os = "linux")]
    fn resident_kb() -> u64 {
        use std::os::unix::fs::MetadataExt as _;
        let inode = std::fs::metadata("/proc/self/exe").unwrap().ino();
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        releasable(&smaps, inode).iter().map(|m| m.rss_kb).sum()
    }

    /// The regression guard for the idle worker's RSS (not timed): start-up's code pages are
    /// really unmapped, and code runs on afterwards (its pages come back from the file).
    #[cfg(target_os = "linux")]
    #[test]
    fn start_up_pages_are_given_back_and_code_still_runs() {
        // Touch a good part of the binary first, as start-up does.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let v: serde_json::Value = rt.block_on(async {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            serde_json::from_str(r#"{"a":[1,2,3]}"#).unwrap()
        });
        let before = resident_kb();
        assert!(before > 0, "the test binary has resident code");
        let r = release_startup_code().unwrap();
        assert!(r.mappings >= 1 && r.bytes > 0, "{r:?}");
        let after = resident_kb();
        assert!(
            after * 2 < before,
            "resident code went from {before} kB only to {after} kB"
        );
        // Code and read-only data are still there.
        let again: serde_json::Value =
            rt.block_on(async { serde_json::from_str(r#"{"a":[1,2,3]}"#).unwrap() });
        assert_eq!(v, again);
        assert_eq!(again["a"][2], 3);
    }
}
