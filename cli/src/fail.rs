//! Exit codes and error lines: one human line with its cause, then a hint where one helps.
//! The codes are documented in docs/cli.md ("Exit codes").

use std::fmt;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use darkrift_etcd::Error;

/// `--log-format json`: the error line is a JSON object too.
static JSON: AtomicBool = AtomicBool::new(false);

/// Whether [`Failure::report`] writes JSON (`--log-format json`) or text.
pub(crate) fn set_json(json: bool) {
    JSON.store(json, Ordering::Relaxed);
}

/// Why the process ends, as a number scripts can test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// Anything not listed below.
    Other = 1,
    /// Bad usage, invalid input or configuration (also credentials or certificates etcd
    /// refuses): nothing was written to etcd.
    Usage = 2,
    /// etcd did not answer (no endpoint reachable, a request timed out).
    Unreachable = 3,
    /// The id (or server) asked for is not registered.
    NotFound = 4,
    /// No id could be held: the id space is exhausted, or the registration was stopped.
    Stopped = 5,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e as u8)
    }
}

/// A failed command: what to print and how to exit.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) exit: Exit,
    message: String,
    hint: Option<String>,
    /// Not a failure after all: stdout's reader went away, the command stops quietly (exit 0).
    closed: bool,
}

impl Failure {
    pub(crate) fn new(exit: Exit, message: impl Into<String>) -> Self {
        Failure {
            exit,
            message: message.into(),
            hint: None,
            closed: false,
        }
    }

    /// stdout's reader went away: end quietly with exit 0 (`darkrift-etcd ls | head -1`).
    pub(crate) fn closed(_: crate::out::Closed) -> Self {
        Failure {
            closed: true,
            ..Failure::new(Exit::Other, "stdout closed")
        }
    }

    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Failure::new(Exit::Usage, message)
    }

    #[must_use]
    pub(crate) fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Prints the error (and its hint) on stderr; returns the exit code.
    pub(crate) fn report(&self) -> ExitCode {
        if self.closed {
            return ExitCode::SUCCESS;
        }
        if JSON.load(Ordering::Relaxed) {
            eprintln!("{}", self.json_line(&timestamp()));
        } else {
            eprintln!("darkrift-etcd: error: {}", one_line(&self.message));
            if let Some(hint) = &self.hint {
                eprintln!("  hint: {}", one_line(hint));
            }
        }
        self.exit.into()
    }

    /// The error as one JSON object shaped like the JSON log lines (`timestamp`, `level`,
    /// `fields.message`, `target`), with the hint and the exit code among its fields.
    fn json_line(&self, timestamp: &str) -> String {
        let mut fields = serde_json::json!({
            "message": one_line(&self.message),
            "exit_code": self.exit as u8,
        });
        if let Some(hint) = &self.hint {
            fields["hint"] = one_line(hint).into();
        }
        serde_json::json!({
            "timestamp": timestamp,
            "level": "ERROR",
            "fields": fields,
            "target": crate::log::TARGET,
        })
        .to_string()
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Now, written as the log lines write it.
fn timestamp() -> String {
    use tracing_subscriber::fmt::format::Writer;
    use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
    let mut text = String::new();
    let _ = SystemTime.format_time(&mut Writer::new(&mut text));
    text
}

/// Line breaks of nested error texts folded into one line.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The cause of an etcd-client error in words: the gRPC code and etcd's message, not tonic's
/// Debug output (metadata maps, detail bytes).
fn etcd_cause(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(status) => {
            format!("{:?}: {}", status.code(), status.message())
        }
        other => {
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(s) = source {
                let more = s.to_string();
                if !text.contains(&more) {
                    text = format!("{text}: {more}");
                }
                source = s.source();
            }
            text
        }
    }
}

/// The cause in a connect failure's reason, without the transport's Debug output: the
/// innermost `message: "…"` (e.g. `Connection refused`), or the text before its `source:`.
fn plain_reason(reason: &str) -> String {
    const MARK: &str = "message: \"";
    if let Some(start) = reason.rfind(MARK) {
        let rest = &reason[start + MARK.len()..];
        if let Some(end) = rest.find('"') {
            return rest[..end].to_owned();
        }
    }
    reason
        .split(", source:")
        .next()
        .unwrap_or(reason)
        .to_owned()
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        match &e {
            Error::InvalidConfig(_) => Failure::usage(e.to_string())
                .hint("`darkrift-etcd config` shows each setting and where it came from"),
            Error::InvalidRegistration(_) => Failure::usage(e.to_string()),
            Error::Unreachable {
                endpoints,
                timeout,
                reason,
            } => Failure::new(
                Exit::Unreachable,
                format!(
                    "etcd unreachable at {endpoints} (no answer within {}): {}",
                    darkrift_etcd::config::layers::format_duration(*timeout),
                    plain_reason(reason)
                ),
            )
            .hint(format!(
                "is etcd running at {endpoints}? (set --endpoints or DARKRIFT_ETCD_ENDPOINTS)"
            )),
            Error::Timeout { .. } => Failure::new(Exit::Unreachable, e.to_string())
                .hint("etcd answered too slowly; raise --request-timeout if it is busy"),
            Error::Tls { .. } => Failure::usage(e.to_string())
                .hint("check --ca-cert, --cert and --key against etcd's certificates"),
            Error::Auth { .. } => {
                Failure::usage(e.to_string()).hint("check --user and --password(-file)")
            }
            Error::Etcd { op, source } => {
                let exit = if e.is_retryable() {
                    Exit::Unreachable
                } else {
                    Exit::Other
                };
                Failure::new(
                    exit,
                    format!("etcd request `{op}` failed: {}", etcd_cause(source)),
                )
            }
            Error::IdSpaceExhausted { .. } => Failure::new(Exit::Stopped, e.to_string())
                .hint("every id is held; raise id_space on every server, or evict stale ones"),
            _ => Failure::new(Exit::Other, e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_kind_has_its_exit_code() {
        let code = |e: Error| Failure::from(e).exit;
        assert_eq!(code(Error::InvalidConfig("x".into())), Exit::Usage);
        assert_eq!(
            code(Error::Unreachable {
                endpoints: "http://a:1".into(),
                timeout: std::time::Duration::from_secs(1),
                reason: "refused".into()
            }),
            Exit::Unreachable
        );
        assert_eq!(
            plain_reason("grpc request error: code: 'x', message: \"tcp connect error\", source: tonic::transport::Error(Transport, ConnectError(ConnectError(\"tcp connect error\", 127.0.0.1:1, Os { code: 111, kind: ConnectionRefused, message: \"Connection refused\" })))"),
            "Connection refused"
        );
        assert_eq!(plain_reason("no answer"), "no answer");
        assert_eq!(code(Error::IdSpaceExhausted { id_space: 3 }), Exit::Stopped);
        assert_eq!(code(Error::NotRegistered), Exit::Other);
        let grpc = Error::Etcd {
            op: "get",
            source: etcd_client::Error::GRpcStatus(tonic::Status::permission_denied("no")),
        };
        let f = Failure::from(grpc);
        assert_eq!(f.exit, Exit::Other);
        assert_eq!(
            f.to_string(),
            "etcd request `get` failed: PermissionDenied: no"
        );
    }

    #[test]
    fn the_json_error_line_is_one_object_with_message_hint_and_code() {
        let line = Failure::usage("bad\nvalue").hint("fix it").json_line("t");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "ERROR");
        assert_eq!(v["fields"]["message"], "bad value");
        assert_eq!(v["fields"]["hint"], "fix it");
        assert_eq!(v["fields"]["exit_code"], 2);
        assert!(!line.contains('\n'));
        assert!(!timestamp().is_empty());
    }
}
