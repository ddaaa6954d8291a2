//! The machine's and the gateway process's state, for the statistics, as
//! the Python gateway reports them (its `machineStats`, and the attributes
//! it sends once), so that dashboards built on its keys show tbgw too:
//!
//! - every report: `totalCpuUsage` (the 15-minute load average per core,
//!   %), `freeMemory` (in spite of its name, the RAM in use, %, as the
//!   Python gateway computes it), `diskUsage` (% of `/`), `freeDisk`
//!   (`12.3G`), `gwProcessCpuUsage` (% of one core since the last report),
//!   `gwMemory` (the gateway's resident memory, % of the RAM), and tbgw's
//!   `gwMemoryMB`;
//! - once, as attributes: `totalMemory`, `totalDisk`, `cpuCount`.
//!
//! Read from Linux's `/proc` and `statvfs`; a value that cannot be read is
//! left out, never guessed.

use serde_json::{Map, Value, json};
use std::time::Instant;

/// Samples the process's CPU time between reports.
#[derive(Debug, Default)]
pub struct Sampler {
    last: Option<(f64, Instant)>,
}

impl Sampler {
    /// The per-report values.
    pub fn sample(&mut self) -> Map<String, Value> {
        let mut out = Map::new();
        let cores = cpu_count();
        if let Some(load15) = load_average_15() {
            out.insert("totalCpuUsage".into(), json!(round(load15 / cores as f64 * 100.0, 2)));
        }
        let mem = meminfo();
        if let Some((total, available)) = mem {
            out.insert("freeMemory".into(), json!(round((total - available) as f64 / total as f64 * 100.0, 1)));
        }
        if let Some((total, free)) = disk("/") {
            out.insert("diskUsage".into(), json!(round((total - free) as f64 / total.max(1) as f64 * 100.0, 1)));
            out.insert("freeDisk".into(), json!(human(free)));
        }
        let now = Instant::now();
        if let Some(cpu) = process_cpu_seconds() {
            if let Some((last_cpu, last_at)) = self.last {
                let wall = now.duration_since(last_at).as_secs_f64();
                if wall > 0.0 {
                    out.insert("gwProcessCpuUsage".into(), json!(round((cpu - last_cpu) / wall * 100.0, 1)));
                }
            }
            self.last = Some((cpu, now));
        }
        if let Some(rss) = process_rss_bytes() {
            out.insert("gwMemoryMB".into(), json!(round(rss as f64 / 1_048_576.0, 1)));
            if let Some((total, _)) = mem {
                out.insert("gwMemory".into(), json!(round(rss as f64 / total as f64 * 100.0, 1)));
            }
        }
        out
    }
}

/// What the machine has, sent once (the Python gateway's attributes).
pub fn once() -> Map<String, Value> {
    let mut out = Map::new();
    if let Some((total, _)) = meminfo() {
        out.insert("totalMemory".into(), json!(human(total)));
    }
    if let Some((total, _)) = disk("/") {
        out.insert("totalDisk".into(), json!(human(total)));
    }
    out.insert("cpuCount".into(), json!(cpu_count()));
    out
}

fn round(x: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    (x * f).round() / f
}

fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

fn load_average_15() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().nth(2)?.parse().ok()
}

/// `MemTotal` and `MemAvailable`, bytes.
fn meminfo() -> Option<(u64, u64)> {
    parse_meminfo(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line[name.len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kb * 1024)
    };
    let total = field("MemTotal:")?;
    (total > 0).then_some(())?;
    Some((total, field("MemAvailable:")?))
}

/// Size and space available to users of the filesystem at `path`, bytes.
fn disk(path: &str) -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        let c = std::ffi::CString::new(path).ok()?;
        let mut s = std::mem::MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: `c` is a NUL-terminated path and `s` a buffer of the
        // right type; statvfs writes it only when it returns 0.
        let s = unsafe {
            if libc::statvfs(c.as_ptr(), s.as_mut_ptr()) != 0 {
                return None;
            }
            s.assume_init()
        };
        let block = s.f_frsize as u64;
        Some((s.f_blocks as u64 * block, s.f_bavail as u64 * block))
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// The process's user and system CPU time, seconds.
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name (which may hold spaces and
    // parentheses) start after its last `)`.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf reads a constant of the system; no memory is involved.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| ticks / hz as f64)
}

fn process_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line["VmRSS:".len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

/// Bytes as psutil's `bytes2human` writes them: `512B`, `1.5K`, `9.8G`.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 8] = ["K", "M", "G", "T", "P", "E", "Z", "Y"];
    for (i, unit) in UNITS.iter().enumerate().rev() {
        let size = 1u128 << ((i + 1) * 10);
        if u128::from(bytes) >= size {
            return format!("{:.1}{unit}", bytes as f64 / size as f64);
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_psutil_writes_them() {
        assert_eq!(human(512), "512B");
        assert_eq!(human(1536), "1.5K");
        assert_eq!(human(10 << 30), "10.0G");
        assert_eq!(human(3 * (1 << 40) / 2), "1.5T");
    }

    #[test]
    fn meminfo_is_read_in_bytes() {
        let text = "MemTotal:       24576000 kB\nMemFree:         1000 kB\nMemAvailable:   12288000 kB\n";
        assert_eq!(parse_meminfo(text), Some((24_576_000 * 1024, 12_288_000 * 1024)));
        assert_eq!(parse_meminfo("MemTotal: 0 kB\nMemAvailable: 0 kB\n"), None);
    }

    #[test]
    fn this_machine_reports_every_value() {
        let mut s = Sampler::default();
        let first = s.sample();
        // Some work, so that the process's CPU share is over zero.
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let second = s.sample();
        for key in ["totalCpuUsage", "freeMemory", "diskUsage", "freeDisk", "gwMemory", "gwMemoryMB"] {
            assert!(first.contains_key(key), "{key} missing from {first:?}");
        }
        assert!(!first.contains_key("gwProcessCpuUsage"), "no share before a second sample");
        let cpu = second["gwProcessCpuUsage"].as_f64().unwrap_or(-1.0);
        assert!(cpu > 0.0, "the work above shows: {second:?}");
        // A test process is a sliver of the RAM (rounded to 0.1%, as the
        // Python gateway rounds): its megabytes show it.
        let mem = second["gwMemory"].as_f64().unwrap_or(-1.0);
        assert!((0.0..100.0).contains(&mem), "{second:?}");
        assert!(second["gwMemoryMB"].as_f64().is_some_and(|mb| mb > 1.0), "{second:?}");
        let once = once();
        assert_eq!(once["cpuCount"], json!(cpu_count()));
        assert!(once["totalMemory"].as_str().is_some_and(|m| m.ends_with('G') || m.ends_with('M')), "{once:?}");
    }
}
