//! The plugin ↔ agent protocol on the agent's unix socket (docs/cni.md): one JSON request line, one JSON
//! response line, then the connection closes. Every message carries `"v"`, the protocol version; an agent
//! answers a version it does not speak with an error naming the versions it does.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The protocol version this build speaks.
pub const VERSION: u32 = 1;

/// What the plugin asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Op {
    /// Allocate (or return the existing) addresses of a handle.
    #[serde(rename_all = "camelCase")]
    Add {
        handle: String,
        container_id: String,
        ifname: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        namespace: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pod: Option<String>,
    },
    /// Release every address of a handle (success when it has none).
    Del { handle: String },
    /// The addresses a handle holds.
    Check { handle: String },
    /// Whether the agent is ready to serve ADD.
    Status,
    /// Release every allocation of this node whose handle starts with `<network>.` and is not in `valid`.
    #[serde(rename_all = "camelCase")]
    Gc { network: String, valid_handles: Vec<String> },
}

/// A request: the protocol version and the operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub v: u32,
    #[serde(flatten)]
    pub op: Op,
}

/// The agent's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Response {
    pub v: u32,
    /// Set when the request failed; the other fields are then empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
    /// Addresses of the handle, each `address/prefix` where the prefix is the block's (ADD, CHECK).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
    /// Pod MTU the agent computed (ADD).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// STATUS: ready for ADD.
    #[serde(default)]
    pub ready: bool,
    /// GC and DEL: how many addresses were released.
    #[serde(default)]
    pub released: u32,
}

/// An error in CNI's terms (the plugin prints it as is).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: u32,
    pub msg: String,
    #[serde(default)]
    pub details: String,
}

/// A failed exchange with the agent.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("talking to the agent: {0}")]
    Io(#[from] std::io::Error),
    #[error("the agent's answer is not valid: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("the agent closed the connection without an answer")]
    Closed,
}

/// Sends one request and waits (up to `timeout`) for the answer.
pub fn call(socket: &Path, op: Op, timeout: Duration) -> Result<Response, ClientError> {
    let mut stream = UnixStream::connect(socket).map_err(|e| ClientError::Connect(socket.display().to_string(), e))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_vec(&Request { v: VERSION, op })?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut reader = BufReader::new(stream);
    let mut answer = String::new();
    if reader.read_line(&mut answer)? == 0 {
        return Err(ClientError::Closed);
    }
    Ok(serde_json::from_str(&answer)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format() {
        let r = Request { v: 1, op: Op::Del { handle: "n.c".into() } };
        assert_eq!(serde_json::to_string(&r).unwrap(), r#"{"v":1,"op":"del","handle":"n.c"}"#);
        let add: Request = serde_json::from_str(
            r#"{"v":1,"op":"add","handle":"n.c","containerId":"c","ifname":"eth0","namespace":"ns","pod":"p"}"#,
        )
        .unwrap();
        assert!(matches!(add.op, Op::Add { pod: Some(ref p), .. } if p == "p"));
        let gc = Request { v: 1, op: Op::Gc { network: "n".into(), valid_handles: vec!["n.a".into()] } };
        assert!(serde_json::to_string(&gc).unwrap().contains(r#""validHandles":["n.a"]"#));
    }
}
