//! `weft-cni`: run by a container runtime with the CNI environment and the network
//! config on stdin; prints a result or a CNI error on stdout (docs/cni.md).

use std::io::{Read, Write};
use std::process::ExitCode;

use weft_cni::env::Env;
use weft_cni::error::{CniError, code};
use weft_cni::plugin;

fn main() -> ExitCode {
    let out = match Env::from_vars(|k| std::env::var(k).ok()) {
        Ok(env) => {
            let mut stdin = Vec::new();
            match std::io::stdin().read_to_end(&mut stdin) {
                Ok(_) => plugin::run(&env, &stdin),
                Err(e) => plugin::Outcome {
                    version: "1.1.0".into(),
                    result: Err(CniError::new(code::IO, format!("reading stdin: {e}"))),
                },
            }
        }
        Err(e) => plugin::Outcome {
            version: "1.1.0".into(),
            result: Err(e),
        },
    };
    let mut stdout = std::io::stdout().lock();
    match out.result {
        Ok(printed) => {
            if let Some(s) = printed {
                let _ = writeln!(stdout, "{s}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = writeln!(stdout, "{}", e.to_json(&out.version));
            ExitCode::FAILURE
        }
    }
}
