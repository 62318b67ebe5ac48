//! The plugin's log: one line per event appended to the file the conflist names, each line carrying the
//! UTC time, the level, the command and the container ID.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// Log levels, most severe first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
}

impl Level {
    pub fn parse(s: Option<&str>) -> Level {
        match s.map(str::to_ascii_lowercase).as_deref() {
            Some("error") => Level::Error,
            Some("warn" | "warning") => Level::Warn,
            Some("debug") => Level::Debug,
            _ => Level::Info,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }
}

/// Appends lines to the log file; a log that cannot be opened is silently off (the plugin's answer on
/// stdout is what matters to the runtime).
pub struct Logger {
    file: Option<File>,
    level: Level,
    prefix: String,
}

impl Logger {
    /// A logger that writes nothing.
    pub fn off() -> Self {
        Logger { file: None, level: Level::Error, prefix: String::new() }
    }

    /// Opens (creating its directory) `path` for appending.
    pub fn open(path: &str, level: Level, command: &str, container_id: &str) -> Self {
        if path.is_empty() {
            return Self::off();
        }
        if let Some(dir) = Path::new(path).parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let file = OpenOptions::new().create(true).append(true).open(path).ok();
        Logger { file, level, prefix: format!("{command} containerID={container_id}") }
    }

    pub fn log(&mut self, level: Level, msg: &str) {
        if level > self.level {
            return;
        }
        if let Some(f) = self.file.as_mut() {
            let line = format!("{} {} {} {}\n", now_rfc3339(), level.name(), self.prefix, msg);
            // One write(2) per line on an O_APPEND file: concurrent plugins never interleave inside a line.
            let _ = f.write_all(line.as_bytes());
        }
    }

    pub fn info(&mut self, msg: &str) {
        self.log(Level::Info, msg)
    }

    pub fn debug(&mut self, msg: &str) {
        self.log(Level::Debug, msg)
    }

    pub fn error(&mut self, msg: &str) {
        self.log(Level::Error, msg)
    }
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn now_rfc3339() -> String {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    format_unix(d.as_secs() as i64, d.subsec_millis())
}

fn format_unix(secs: i64, millis: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(format_unix(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_unix(1_709_210_096, 7), "2024-02-29T12:34:56.007Z");
    }
}
