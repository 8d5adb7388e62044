//! Writing events: NDJSON (the contract in DESIGN.md) or short text lines.

use std::{
    fs::File,
    io::{self, BufWriter, Write},
    path::Path,
};

use serde::Serialize;
use serde_json::Value;

use crate::engine::model::Report;

/// Turns CLOCK_MONOTONIC nanoseconds (kernel timestamps) into wall time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// realtime - monotonic, in ns.
    offset_ns: i128,
}

impl Clock {
    pub fn now() -> Self {
        let mono = monotonic_ns() as i128;
        let real = realtime_ns() as i128;
        Self {
            offset_ns: real - mono,
        }
    }

    #[cfg(test)]
    pub fn fixed(offset_ns: i128) -> Self {
        Self { offset_ns }
    }

    /// RFC 3339, UTC, nanoseconds.
    pub fn rfc3339(&self, mono_ns: u64) -> String {
        let t = (mono_ns as i128 + self.offset_ns).max(0) as u128;
        rfc3339_from_unix_ns(t)
    }
}

fn clock_ns(id: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The clock `bpf_ktime_get_ns` uses.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

pub fn realtime_ns() -> u64 {
    clock_ns(libc::CLOCK_REALTIME)
}

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + (m <= 2) as i64;
    (y, m, d)
}

pub fn rfc3339_from_unix_ns(ns: u128) -> String {
    let secs = (ns / 1_000_000_000) as i64;
    let nanos = (ns % 1_000_000_000) as u32;
    let (y, mo, d) = civil(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// Where lines go.
pub struct Output {
    w: Box<dyn Write + Send>,
    /// The host name as a JSON string literal, escaped once.
    host_json: String,
    clock: Clock,
    text: bool,
    /// Reused for every line: no allocation per event on the hot path.
    buf: Vec<u8>,
    pub lines: u64,
}

impl Output {
    /// Opens the destination before anything is attached, so a bad path
    /// fails first.
    pub fn open(path: Option<&Path>, host: String, text: bool) -> io::Result<Self> {
        let w: Box<dyn Write + Send> = match path {
            Some(p) => Box::new(BufWriter::new(File::create(p)?)),
            None => Box::new(BufWriter::new(io::stdout())),
        };
        Ok(Self::with_writer(w, &host, Clock::now(), text))
    }

    fn with_writer(w: Box<dyn Write + Send>, host: &str, clock: Clock, text: bool) -> Self {
        let host_json = serde_json::to_string(host).expect("a string serializes");
        Self {
            w,
            host_json,
            clock,
            text,
            buf: Vec::with_capacity(4096),
            lines: 0,
        }
    }

    #[cfg(test)]
    pub fn to_vec(host: &str, clock: Clock) -> (Self, std::sync::Arc<std::sync::Mutex<Vec<u8>>>) {
        let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.0.lock().expect("not poisoned").extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        (
            Self::with_writer(Box::new(Shared(buf.clone())), host, clock, false),
            buf,
        )
    }

    /// Re-reads the wall clock (it may be stepped by NTP).
    pub fn resync_clock(&mut self) {
        self.clock = Clock::now();
    }

    /// Writes one event object: `ts`, `event` and `host` first, then the
    /// fields of `body` (a struct or map), serialized straight into a reused
    /// buffer (`event` is one of this program's fixed names).
    pub fn event<T: Serialize>(
        &mut self,
        ts_mono_ns: u64,
        event: &str,
        body: &T,
    ) -> io::Result<()> {
        if self.text {
            return self.text_event(ts_mono_ns, event, body);
        }
        self.buf.clear();
        write!(
            self.buf,
            "{{\"ts\":\"{}\",\"event\":\"{event}\",\"host\":{}",
            self.clock.rfc3339(ts_mono_ns),
            self.host_json
        )?;
        let start = self.buf.len();
        serde_json::to_writer(&mut self.buf, body).map_err(io::Error::other)?;
        // `body` wrote `{...}`: join its fields, or drop an empty `{}`.
        if self.buf.len() - start <= 2 {
            self.buf.truncate(start);
            self.buf.push(b'}');
        } else {
            self.buf[start] = b',';
        }
        self.buf.push(b'\n');
        self.w.write_all(&self.buf)?;
        self.lines += 1;
        Ok(())
    }

    fn text_event<T: Serialize>(
        &mut self,
        ts_mono_ns: u64,
        event: &str,
        body: &T,
    ) -> io::Result<()> {
        let mut obj = serde_json::Map::new();
        obj.insert("ts".into(), Value::String(self.clock.rfc3339(ts_mono_ns)));
        obj.insert("event".into(), Value::String(event.into()));
        if let Value::Object(fields) = serde_json::to_value(body).map_err(io::Error::other)? {
            obj.extend(fields);
        }
        writeln!(self.w, "{}", text_line(&Value::Object(obj)))?;
        self.lines += 1;
        Ok(())
    }

    pub fn report(&mut self, r: &Report) -> io::Result<()> {
        match r {
            Report::ConnEnd(c) => self.event(c.ts_ns, "conn_end", c),
            Report::BadGateway(b) => self.event(b.ts_ns, "bad_gateway", b),
        }
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }
}

/// A short human line for `--text`.
fn text_line(v: &Value) -> String {
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
    match v.get("event").and_then(Value::as_str) {
        Some("bad_gateway") => format!(
            "{} {} {} client={} upstream={} cause={} closed_by={} how={}: {}",
            s("ts"),
            v["status"],
            v["proxy"]["comm"].as_str().unwrap_or("?"),
            s("client"),
            v["upstream"]["dst"].as_str().unwrap_or("-"),
            s("cause"),
            s("closed_by"),
            s("how"),
            s("explanation"),
        ),
        Some("conn_end") => format!(
            "{} conn_end {} -> {} {} closed_by={} how={} rst_reason={} error={} idle_ms={} cause={}",
            s("ts"),
            s("src"),
            s("dst"),
            v["comm"].as_str().unwrap_or("?"),
            s("closed_by"),
            s("how"),
            s("rst_reason"),
            s("error"),
            v["idle_ms"],
            s("cause"),
        ),
        _ => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339_from_unix_ns(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339_from_unix_ns(1_795_000_000_123_456_789),
            "2026-11-18T11:06:40.123456789Z"
        );
        assert_eq!(
            rfc3339_from_unix_ns(951_782_400_000_000_000),
            "2000-02-29T00:00:00.000000000Z"
        );
    }

    #[test]
    fn event_with_empty_and_struct_bodies() {
        #[derive(Serialize)]
        struct B {
            a: u8,
            s: &'static str,
        }
        let (mut out, buf) = Output::to_vec("n\"1", Clock::fixed(0));
        out.event(0, "x", &json!({})).unwrap();
        out.event(0, "y", &B { a: 1, s: "q" }).unwrap();
        let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            lines[0],
            json!({"ts": "1970-01-01T00:00:00.000000000Z", "event": "x", "host": "n\"1"})
        );
        assert_eq!(lines[1]["a"], 1);
        assert_eq!(lines[1]["s"], "q");
        assert_eq!(lines[1]["host"], "n\"1");
    }

    #[test]
    fn event_puts_common_fields_first() {
        let (mut out, buf) = Output::to_vec("node-1", Clock::fixed(0));
        out.event(5, "stats", &json!({"a": 1})).unwrap();
        let line = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        assert_eq!(line, "{\"ts\":\"1970-01-01T00:00:00.000000005Z\",\"event\":\"stats\",\"host\":\"node-1\",\"a\":1}\n");
    }
}
