//! Value parsers shared by the command-line front-ends: every count, size and step flag is
//! range-checked when the arguments are parsed, so a bad value is a clap error (exit 2) that
//! names the flag, before anything runs or is written.

use std::ops::RangeInclusive;

/// An integer flag restricted to `range` (`value_parser = int_in(1..=65_536)`).
pub fn int_in<T>(range: RangeInclusive<T>) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy + Send + Sync + 'static,
{
    move |s: &str| {
        let v: T = s.trim().parse().map_err(|_| format!("`{s}` is not an integer"))?;
        if range.contains(&v) {
            Ok(v)
        } else {
            Err(format!("{v} is out of range: must be in {}..={}", range.start(), range.end()))
        }
    }
}

/// A finite float flag restricted to `[lo, hi]`.
pub fn float_in(lo: f64, hi: f64) -> impl Fn(&str) -> Result<f64, String> + Clone + Send + Sync + 'static {
    move |s: &str| {
        let v: f64 = s.trim().parse().map_err(|_| format!("`{s}` is not a number"))?;
        if v.is_finite() && v >= lo && v <= hi {
            Ok(v)
        } else {
            Err(format!("{v} is out of range: must be a finite number in [{lo}, {hi}]"))
        }
    }
}

/// A strictly positive finite float (learning rates, C values).
pub fn positive_float(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("`{s}` is not a number"))?;
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(format!("{v} must be a positive finite number"))
    }
}

/// A progress line with an ETA on stderr, drawn only when stderr is a terminal.
pub struct Progress {
    label: String,
    start: std::time::Instant,
    terminal: bool,
}

impl Progress {
    /// A progress line for `label`.
    pub fn new(label: &str) -> Progress {
        Progress { label: label.into(), start: std::time::Instant::now(), terminal: std::io::IsTerminal::is_terminal(&std::io::stderr()) }
    }

    /// Reports `done` of `total` steps.
    pub fn tick(&mut self, done: usize, total: usize) {
        if !self.terminal || total == 0 {
            return;
        }
        let el = self.start.elapsed().as_secs_f64();
        let eta = if done > 0 { el / done as f64 * (total - done) as f64 } else { f64::NAN };
        let width = 30;
        let filled = width * done / total;
        eprint!("\r{} [{}{}] {done}/{total} {el:.0}s eta {eta:.0}s ", self.label, "#".repeat(filled), " ".repeat(width - filled));
        if done == total {
            eprintln!();
        }
    }
}

/// Runs a binary's body so that no panic (a bug, or a libtorch error surfacing through tch's
/// panicking API, such as a failed allocation) ends it with a backtrace and status 101: the
/// panic prints one sentence on stderr and the process exits with status 1.
pub fn guard_panics(body: impl FnOnce() -> std::process::ExitCode + std::panic::UnwindSafe) -> std::process::ExitCode {
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown cause".into());
        // libtorch messages carry a C++ backtrace (escaped or not) after the first line.
        if let e @ crate::Error::Resource(_) = crate::error::torch_panic_error(&msg) {
            eprintln!("error: {e}");
            return;
        }
        let first = crate::error::first_line(&msg);
        let at = info.location().map(|l| format!(" ({}:{})", l.file(), l.line())).unwrap_or_default();
        eprintln!("error: internal error: {first}{at}; if the input looks right, this is a bug: please report it with the command line");
    }));
    match std::panic::catch_unwind(body) {
        Ok(code) => code,
        Err(_) => std::process::ExitCode::from(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_messages() {
        let p = int_in(1usize..=10);
        assert_eq!(p("3"), Ok(3));
        assert!(p("0").unwrap_err().contains("1..=10"));
        assert!(p("18446744073709551615").unwrap_err().contains("out of range"));
        assert!(p("-1").unwrap_err().contains("not an integer"));
        assert!(float_in(0.0, 1.0)("NaN").is_err());
        assert!(float_in(0.0, 1.0)("inf").is_err());
        assert_eq!(float_in(0.0, 1.0)("0.5"), Ok(0.5));
        assert!(positive_float("0").is_err());
    }
}
