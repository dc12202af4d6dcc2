//! The metrics snapshot (`__org.majordomo_metrics`): load, memory, uptime and CPU time from
//! `/proc`, cheap enough to take every interval.

use serde_json::{Value, json};

pub fn snapshot() -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let mut mem = serde_json::Map::new();
    for line in read("/proc/meminfo").lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let key = match k {
            "MemTotal" => "total",
            "MemAvailable" => "available",
            "MemFree" => "free",
            "SwapTotal" => "swap_total",
            "SwapFree" => "swap_free",
            _ => continue,
        };
        let kb: u64 = v
            .split_whitespace()
            .next()
            .and_then(|x| x.parse().ok())
            .unwrap_or(0);
        mem.insert(key.into(), json!(kb * 1024));
    }
    let load: Vec<f64> = read("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .filter_map(|x| x.parse().ok())
        .collect();
    let uptime: f64 = read("/proc/uptime")
        .split_whitespace()
        .next()
        .and_then(|x| x.parse().ok())
        .unwrap_or(0.0);
    let cpu: Vec<u64> = read("/proc/stat")
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let busy: u64 = cpu
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    let idle: u64 = cpu.get(3).copied().unwrap_or(0) + cpu.get(4).copied().unwrap_or(0);
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    json!({
        "at_ms": at,
        "uptime_s": uptime,
        "load": load,
        "memory": mem,
        "cpu_ticks": {"busy": busy, "idle": idle},
        "filesystems": crate::sys::fsinfo().unwrap_or(Value::Null),
    })
}
