//! Writing results: stdout for data (a closed pipe such as `| head` is not an error), stderr for notes.

use std::io::Write;

use serde_json::Value;

use crate::error::{Error, Result};

/// Writes `text` to stdout as is.
pub fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    // A reader that went away (`| head`) is not worth an error message.
    let _ = out.write_all(text.as_bytes()).and_then(|_| out.flush());
}

/// Writes a note for the person to stderr (kubectl's "No resources found." goes there too).
pub fn note(text: &str) {
    eprintln!("{text}");
}

/// `value` as YAML.
pub fn yaml(value: &Value) -> Result<String> {
    serde_yaml::to_string(value).map_err(|e| Error::Output(e.to_string()))
}

/// `value` as indented JSON with a final newline.
pub fn json(value: &Value) -> Result<String> {
    serde_json::to_string_pretty(value).map(|s| s + "\n").map_err(|e| Error::Output(e.to_string()))
}
