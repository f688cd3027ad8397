//! The error type that crosses the wire, in go-micro's shape.

use serde::{Deserialize, Serialize};
use std::fmt;

/// An RPC error as go-micro shapes it: `{"id", "code", "detail", "status"}`.
///
/// `id` names who raised it (`go.micro.client`, a service name, …), `code`
/// is an HTTP status code and `status` its text. It travels in the
/// `Micro-Error` header as JSON and comes back to the caller as the same
/// value. Like go-micro's, its `Display` is that JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Error {
    /// Who raised the error, e.g. `go.micro.client` or a service name.
    #[serde(default)]
    pub id: String,
    /// An HTTP status code.
    #[serde(default)]
    pub code: i32,
    /// What went wrong, for a person to read.
    #[serde(default)]
    pub detail: String,
    /// The HTTP status text of `code`.
    #[serde(default)]
    pub status: String,
}

impl Error {
    /// An error with any code; `status` is derived from the code.
    pub fn new(id: impl Into<String>, detail: impl Into<String>, code: i32) -> Self {
        Error { id: id.into(), code, detail: detail.into(), status: status_text(code).to_string() }
    }

    /// 400 Bad Request.
    pub fn bad_request(id: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(id, detail, 400)
    }
    /// 401 Unauthorized.
    pub fn unauthorized(id: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(id, detail, 401)
    }
    /// 403 Forbidden.
    pub fn forbidden(id: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(id, detail, 403)
    }
    /// 404 Not Found.
    pub fn not_found(id: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(id, detail, 404)
    }
    /// 405 Method Not Allowed.
    pub fn method_not_allowed(id: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(id, detail, 405)
    }
    /// 408 Request Timeout.
    pub fn timeout(id: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(id, detail, 408)
    }
    /// 409 Conflict.
    pub fn conflict(id: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(id, detail, 409)
    }
    /// 500 Internal Server Error.
    pub fn internal(id: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(id, detail, 500)
    }
    /// 503 Service Unavailable.
    pub fn unavailable(id: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(id, detail, 503)
    }

    /// The JSON form, as sent in the `Micro-Error` header.
    pub fn to_json(&self) -> String {
        // Serialising four plain fields cannot fail; fall back to a minimal form anyway.
        serde_json::to_string(self).unwrap_or_else(|_| format!("{{\"code\":{}}}", self.code))
    }

    /// Parses an error as go-micro's `errors.Parse` does: JSON if it is
    /// JSON, otherwise the whole text becomes the detail.
    pub fn parse(text: &str) -> Self {
        match serde_json::from_str::<Error>(text) {
            Ok(e) => e,
            Err(_) => Error { detail: text.to_string(), ..Error::default() },
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_json())
    }
}

impl std::error::Error for Error {}

/// The HTTP status text of a code, as Go's `http.StatusText` gives it.
pub fn status_text(code: i32) -> &'static str {
    match code {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Request Entity Too Large",
        429 => "Too Many Requests",
        499 => "Client Closed Request",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape_matches_go_micro() {
        let e = Error::not_found("go.micro.client", "service foo: not found");
        assert_eq!(
            e.to_json(),
            r#"{"id":"go.micro.client","code":404,"detail":"service foo: not found","status":"Not Found"}"#
        );
        assert_eq!(Error::parse(&e.to_json()), e);
    }

    #[test]
    fn parse_of_plain_text_keeps_it_as_detail() {
        let e = Error::parse("boom");
        assert_eq!(e.detail, "boom");
        assert_eq!(e.code, 0);
    }
}
