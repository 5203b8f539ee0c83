//! Local multi-process launch (torchrun's standalone mode) and per-rank logging: the process
//! supervisor behind `msclip-train --nproc-per-node`, in the library so it is tested.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Set in the environment of the workers that [`supervise`] spawns.
pub const LOCAL_WORKER: &str = "MSCLIP_LOCAL_WORKER";

/// The terminal's stderr, kept when a rank's stderr goes to its log, for the final error.
static CONSOLE: std::sync::OnceLock<i32> = std::sync::OnceLock::new();

/// Sends this process's stderr to `path` (ranks other than 0 log to RUN/rank-N.log); the
/// original stderr is kept for [`console_line`].
pub fn log_to_file(path: &Path) -> Result<()> {
    use std::os::fd::IntoRawFd;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let f = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| Error::io(path, e))?;
    let fd = f.into_raw_fd();
    // SAFETY: duplicating this process's own descriptors; `fd` is a file we just opened.
    let saved = unsafe { libc::dup(2) };
    if saved >= 0 {
        let _ = CONSOLE.set(saved);
    }
    // SAFETY: as above; on failure stderr is unchanged.
    if unsafe { libc::dup2(fd, 2) } < 0 {
        return Err(Error::io(path, std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Writes `line` to the terminal's stderr when [`log_to_file`] redirected stderr (so a rank's
/// final error reaches the terminal as well as its log); does nothing otherwise.
pub fn console_line(line: &str) {
    use std::io::Write;
    use std::os::fd::FromRawFd;
    if let Some(&fd) = CONSOLE.get() {
        // SAFETY: `fd` is the duplicate of the original stderr made by `log_to_file`; wrapped
        // in ManuallyDrop so it stays open.
        let mut console = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
        let _ = writeln!(console, "{line}");
    }
}

/// Runs `program args` `n` times with RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR=127.0.0.1,
/// MASTER_PORT (the given one, or a free one) and [`LOCAL_WORKER`] set, and waits. When a worker
/// fails, the others get `grace` to fail on their own (they do at their next collective) and
/// are then killed; the result is the first failure's: exit 2 of a worker (bad input) is
/// [`Error::Invalid`], any other failure [`Error::Stopped`], naming the worker and `log_dir`.
pub fn supervise(program: &Path, args: &[String], n: usize, port: Option<u16>, log_dir: &Path, grace: Duration) -> Result<()> {
    let port = match port {
        Some(p) => p,
        None => std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| Error::Invalid(format!("no free local port for the rendezvous: {e}")))?,
    };
    eprintln!("spawning {n} workers (rendezvous 127.0.0.1:{port}; ranks 1..{n} log to {}/rank-N.log)", log_dir.display());
    let mut children = vec![];
    for rank in 0..n {
        let child = std::process::Command::new(program)
            .args(args)
            .env(LOCAL_WORKER, "1")
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", n.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .spawn();
        match child {
            Ok(c) => children.push(Some(c)),
            Err(e) => {
                for c in children.iter_mut().flatten() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                return Err(Error::Invalid(format!("spawning worker {rank} ({}): {e}", program.display())));
            }
        }
    }
    let mut failure: Option<(usize, i32)> = None;
    let mut failed_at: Option<Instant> = None;
    loop {
        for (rank, slot) in children.iter_mut().enumerate() {
            if let Some(c) = slot {
                if let Ok(Some(status)) = c.try_wait() {
                    *slot = None;
                    if !status.success() && failure.is_none() {
                        failure = Some((rank, status.code().unwrap_or(1)));
                        failed_at = Some(Instant::now());
                    }
                }
            }
        }
        if children.iter().all(|c| c.is_none()) {
            break;
        }
        if failed_at.is_some_and(|t| t.elapsed() > grace) {
            for c in children.iter_mut().flatten() {
                let _ = c.kill();
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    match failure {
        None => Ok(()),
        Some((rank, code)) => {
            let msg = format!("worker {rank} exited with status {code}; all workers stopped (see {}/rank-N.log)", log_dir.display());
            if code == 2 {
                Err(Error::Invalid(msg))
            } else {
                Err(Error::Stopped(msg))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["-c".into(), script.into()]
    }

    /// Every worker sees its rank and the world; all succeeding is Ok; one failing stops the
    /// others after the grace (not after their own long run) and names it; exit 2 is input.
    #[test]
    fn the_supervisor_runs_ranks_and_stops_them_on_a_failure() {
        let dir = std::env::temp_dir().join(format!("msclip-supervise-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let marker = dir.join("seen");
        let script = format!("echo \"$RANK/$WORLD_SIZE/$MASTER_ADDR\" >> {}", marker.display());
        supervise(Path::new("/bin/sh"), &sh(&script), 3, Some(29999), &dir, Duration::from_secs(5)).unwrap();
        let mut seen: Vec<String> = std::fs::read_to_string(&marker).unwrap().lines().map(String::from).collect();
        seen.sort();
        assert_eq!(seen, ["0/3/127.0.0.1", "1/3/127.0.0.1", "2/3/127.0.0.1"]);
        let t = Instant::now();
        let err = supervise(
            Path::new("/bin/sh"),
            &sh("if [ \"$RANK\" = 1 ]; then exit 3; else sleep 60; fi"),
            3,
            None,
            &dir,
            Duration::from_millis(500),
        )
        .unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(30), "the others were killed after the grace");
        assert!(matches!(err, Error::Stopped(_)) && err.to_string().contains("worker 1 exited with status 3"), "{err}");
        let err = supervise(Path::new("/bin/sh"), &sh("exit 2"), 2, None, &dir, Duration::from_millis(500)).unwrap_err();
        assert!(matches!(err, Error::Invalid(_)), "{err}");
        assert!(supervise(Path::new("/nonexistent/program"), &[], 2, None, &dir, Duration::from_millis(500)).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
