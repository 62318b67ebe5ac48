//! `tabby`: the CNI plugin binary. See the library for the commands.

use std::io::{Read, Write};

fn main() {
    let mut stdin = Vec::new();
    // A runtime that passes no stdin gets the spec's decode error from the command.
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let (code, out) = tabby_cni::plugin::run(&stdin, &|k| std::env::var(k).ok());
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
    std::process::exit(code);
}
