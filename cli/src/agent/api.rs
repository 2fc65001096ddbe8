//! The wire types of the agent's API, version 1 (docs/agent-api.md), and their validation.
//!
//! Every request body is parsed into these types with unknown fields refused, then checked
//! here before anything reaches etcd, so a bad request gets a 4xx and writes nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::handle::Handle;

/// The API's version, the first segment of every path and the `v` of every answer.
pub(crate) const VERSION: u32 = 1;

/// Largest request body read (bytes); a larger one is refused with 413 before it is read whole.
pub(crate) const MAX_BODY: usize = 64 * 1024;

/// When a reserved registration is announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Readiness {
    /// At once, as `register` does.
    #[default]
    Immediate,
    /// When a TCP connect to host:port succeeds (or after the ready bound).
    Probe,
    /// On `POST …/ready` (or after the ready bound).
    Manual,
}

/// `resume` of a register request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Resume {
    /// The id held before.
    pub(crate) id: u16,
    /// The handle it was registered with.
    pub(crate) handle: String,
}

/// `POST /v1/registrations`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RegisterRequest {
    pub(crate) group: String,
    pub(crate) host: String,
    pub(crate) port: u16,
    #[serde(default)]
    pub(crate) properties: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) ttl_ms: Option<u64>,
    #[serde(default)]
    pub(crate) readiness: Readiness,
    #[serde(default)]
    pub(crate) health_url: Option<String>,
    #[serde(default)]
    pub(crate) watch_groups: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) resume: Option<Resume>,
}

/// `POST /v1/registrations/{handle}/unreachable`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UnreachableRequest {
    pub(crate) id: u16,
}

/// A register request after validation.
#[derive(Debug, Clone)]
pub(crate) struct Checked {
    pub(crate) ttl: Option<Duration>,
    pub(crate) resume: Option<(u16, Handle)>,
    pub(crate) health_url: Option<String>,
}

/// Longest TTL accepted: a day. Longer only hides dead servers.
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

impl RegisterRequest {
    /// Checks what the library's own validation does not see (TTL range, the resume handle,
    /// the health URL's scheme). Group, host and port are checked by the library's
    /// `Registration::new`, whose typed error becomes `invalid` too.
    pub(crate) fn check(&self) -> Result<Checked, ApiError> {
        let ttl = match self.ttl_ms {
            None => None,
            Some(0) => {
                return Err(ApiError::invalid(
                    "ttl_ms must be at least 1 (rounded up to whole seconds)",
                ))
            }
            Some(ms) => {
                // etcd counts TTLs in whole seconds: round up, never shorten.
                let secs = ms.div_ceil(1000);
                let ttl = Duration::from_secs(secs);
                if ttl > MAX_TTL {
                    return Err(ApiError::invalid("ttl_ms must be at most 86400000 (a day)"));
                }
                Some(ttl)
            }
        };
        if self.port == 0 {
            return Err(ApiError::invalid("port must be 1..=65535"));
        }
        let resume = match &self.resume {
            None => None,
            Some(r) => {
                if r.id == 0 {
                    return Err(ApiError::invalid("resume.id must be 1..=65535"));
                }
                let handle = Handle::parse(&r.handle)
                    .ok_or_else(|| ApiError::invalid("resume.handle must be 64 hex digits"))?;
                Some((r.id, handle))
            }
        };
        if let Some(url) = &self.health_url {
            if !url.starts_with("http://") {
                return Err(ApiError::invalid("health_url must be an http:// URL"));
            }
        }
        if let Some(groups) = &self.watch_groups {
            if groups.is_empty() {
                return Err(ApiError::invalid(
                    "watch_groups must name at least one group (omit it for all groups)",
                ));
            }
        }
        Ok(Checked {
            ttl,
            resume,
            health_url: self.health_url.clone(),
        })
    }
}

/// An error answer: a status and `{"error": code, "message": text}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    /// 400 `bad_request`: malformed JSON, an unknown or missing field.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    /// 400 `invalid`: a value out of range.
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid", message)
    }
    /// 404 `not_found`: unknown handle or path.
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    /// 409 `id_taken`: the id to resume is held by another server.
    pub(crate) fn id_taken(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "id_taken", message)
    }
    /// 409 `conflict`: the request does not fit the registration's state.
    pub(crate) fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
    /// 413 `too_large`.
    pub(crate) fn too_large() -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("request bodies are at most {MAX_BODY} bytes"),
        )
    }
    /// 503 `unavailable`: etcd did not answer; nothing was written.
    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
    /// 500 `internal`.
    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// The answer for a library error.
    pub(crate) fn from_registry(e: &darkrift_etcd::Error) -> Self {
        use darkrift_etcd::Error as E;
        match e {
            E::InvalidRegistration(_) | E::InvalidConfig(_) | E::GroupNotWatched { .. } => {
                Self::invalid(e.to_string())
            }
            E::IdTaken { .. } => Self::id_taken(e.to_string()),
            E::IdSpaceExhausted { .. } => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "exhausted", e.to_string())
            }
            _ if e.is_retryable() => Self::unavailable(e.to_string()),
            _ => Self::internal(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"v": VERSION, "error": self.code, "message": self.message})),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: &str) -> RegisterRequest {
        serde_json::from_str(body).expect("parses")
    }

    #[test]
    fn defaults_are_immediate_with_no_ttl_override() {
        let r = request(r#"{"group":"game","host":"10.0.0.5","port":4296}"#);
        assert_eq!(r.readiness, Readiness::Immediate);
        let c = r.check().expect("valid");
        assert_eq!(c.ttl, None);
        assert!(c.resume.is_none());
    }

    #[test]
    fn unknown_fields_and_wrong_types_do_not_parse() {
        for body in [
            r#"{"group":"game","host":"h","port":1,"prot":2}"#,
            r#"{"group":"game","host":"h","port":70000}"#,
            r#"{"group":"game","host":"h","port":1,"readiness":"later"}"#,
            r#"{"group":"game","host":"h"}"#,
        ] {
            assert!(
                serde_json::from_str::<RegisterRequest>(body).is_err(),
                "{body}"
            );
        }
    }

    #[test]
    fn ttls_round_up_to_whole_seconds_and_are_bounded() {
        let ttl = |ms: u64| {
            request(&format!(
                r#"{{"group":"g","host":"h","port":1,"ttl_ms":{ms}}}"#
            ))
            .check()
            .map(|c| c.ttl)
        };
        assert_eq!(ttl(5000), Ok(Some(Duration::from_secs(5))));
        assert_eq!(ttl(4001), Ok(Some(Duration::from_secs(5))));
        assert_eq!(ttl(1), Ok(Some(Duration::from_secs(1))));
        assert_eq!(ttl(0).map_err(|e| e.code), Err("invalid"));
        assert_eq!(ttl(86_400_001).map_err(|e| e.code), Err("invalid"));
    }

    #[test]
    fn port_zero_a_bad_resume_and_a_non_http_health_url_are_invalid() {
        for body in [
            r#"{"group":"g","host":"h","port":0}"#,
            r#"{"group":"g","host":"h","port":1,"resume":{"id":0,"handle":"00"}}"#,
            r#"{"group":"g","host":"h","port":1,"resume":{"id":3,"handle":"xyz"}}"#,
            r#"{"group":"g","host":"h","port":1,"health_url":"https://x/health"}"#,
            r#"{"group":"g","host":"h","port":1,"watch_groups":[]}"#,
        ] {
            let e = request(body).check().expect_err(body);
            assert_eq!(e.code, "invalid", "{body}");
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn a_valid_resume_carries_its_handle() {
        let handle = "ab".repeat(32);
        let r = request(&format!(
            r#"{{"group":"g","host":"h","port":1,"resume":{{"id":7,"handle":"{handle}"}}}}"#
        ));
        let (id, h) = r.check().expect("valid").resume.expect("resume");
        assert_eq!(id, 7);
        assert_eq!(h.to_string(), handle);
    }
}
