//! CNI errors: the spec's codes and the JSON the plugin prints with them.

use serde::{Deserialize, Serialize};

/// The spec's well-known error codes, and Weft's own (100 and up).
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in the network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables (`CNI_COMMAND`, `CNI_CONTAINERID`, ...).
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure.
    pub const IO: u32 = 5;
    /// Failed to decode content (the stdin config, a delegate's output).
    pub const DECODE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later (the agent is not reachable or not ready).
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot take ADDs now.
    pub const NOT_AVAILABLE: u32 = 50;
    /// Weft: the attachment or its interface already exists.
    pub const EXISTS: u32 = 100;
    /// Weft: CHECK found part of the attachment missing.
    pub const MISSING: u32 = 101;
}

/// A CNI error as printed on stdout: `{"cniVersion","code","msg","details"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{msg} (code {code})")]
pub struct CniError {
    /// The error code.
    pub code: u32,
    /// A short message (one line).
    pub msg: String,
    /// Longer details, may be empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    /// An error with `code` and a one-line message.
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// The same error with `details`.
    pub fn with_details(mut self, details: impl Into<String>) -> CniError {
        self.details = details.into();
        self
    }

    /// The JSON the plugin prints, tagged with `version`.
    pub fn to_json(&self, version: &str) -> String {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Out<'a> {
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            #[serde(skip_serializing_if = "str::is_empty")]
            details: &'a str,
        }
        serde_json::to_string(&Out {
            cni_version: version,
            code: self.code,
            msg: &self.msg,
            details: &self.details,
        })
        .unwrap_or_else(|_| format!("{{\"code\":{}}}", self.code))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_has_the_spec_fields() {
        let e = CniError::new(code::TRY_AGAIN_LATER, "weft-agent is not ready");
        assert_eq!(
            e.to_json("1.0.0"),
            r#"{"cniVersion":"1.0.0","code":11,"msg":"weft-agent is not ready"}"#
        );
        let e = e.with_details("no subnet yet");
        let v: serde_json::Value = serde_json::from_str(&e.to_json("1.1.0")).unwrap();
        assert_eq!(v["details"], "no subnet yet");
        assert_eq!(v["cniVersion"], "1.1.0");
    }
}
