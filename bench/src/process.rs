//! Child processes of a bench (tbgw in gateway mode, a floor client) and
//! what they cost, read from `/proc`.

use std::time::{Duration, Instant};

/// A `/proc/<pid>/status` value in kB (`VmRSS:`, `VmHWM:`, ...).
pub fn status_kb(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// User + system CPU time of `pid` so far, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let (utime, stime): (f64, f64) = (fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?);
    // Clock ticks: USER_HZ, 100 on every Linux of today.
    Some((utime + stime) / 100.0)
}

/// A child process killed (and reaped) when dropped: a bench that fails
/// half-way leaves no gateway running.
pub struct Child(pub std::process::Child);

impl Child {
    pub fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// This bench binary again, as a child with `env` (its mode: gateway,
/// floor), logging at `TBGW_BENCH_LOG` (default `warn`) to stderr.
pub fn spawn_self(env: &[(&str, String)]) -> anyhow::Result<Child> {
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let log = std::env::var("TBGW_BENCH_LOG").unwrap_or_else(|_| "warn".into());
    Ok(Child(cmd.env("RUST_LOG", log).stdout(std::process::Stdio::null()).spawn()?))
}

/// What a child did while measured.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    /// Of what `counted` counts (frames, values), per second.
    pub counted_per_s: f64,
    /// CPU, % of one core.
    pub cpu_percent: f64,
    /// Peak RSS (`VmHWM`, from the child's start), MB.
    pub peak_rss_mb: f64,
}

/// After `settle`, the child's CPU and `counted` (what it has done so far)
/// over `seconds`; then the child is stopped.
pub fn measure(
    mut child: Child,
    settle: Duration,
    seconds: u64,
    counted: impl Fn() -> Option<u64>,
) -> anyhow::Result<Run> {
    let pid = child.id();
    std::thread::sleep(settle);
    if let Some(status) = child.0.try_wait()? {
        anyhow::bail!("the child exited: {status}");
    }
    let (cpu0, n0, t0) = (cpu_seconds(pid).unwrap_or(0.0), counted().unwrap_or(0), Instant::now());
    std::thread::sleep(Duration::from_secs(seconds));
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid).unwrap_or(0.0) - cpu0;
    let n = counted().unwrap_or(0).saturating_sub(n0);
    let peak = status_kb(pid, "VmHWM:").unwrap_or(0);
    drop(child);
    Ok(Run { counted_per_s: n as f64 / elapsed, cpu_percent: cpu / elapsed * 100.0, peak_rss_mb: peak as f64 / 1024.0 })
}
