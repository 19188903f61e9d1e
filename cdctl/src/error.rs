//! Error kinds that decide the exit code, and gRPC status codes in words.
//!
//! Every failure reaches `main` as an [`anyhow::Error`] whose chain reads as one line
//! (`run start: not found: pipeline "x" does not exist`). Two kinds are marked so `main` can
//! choose the exit code: [`UsageError`] (exit 2) and [`StatusError`] (exit 2 when the server
//! said `INVALID_ARGUMENT`, 1 otherwise).

use std::fmt;

use tonic::{Code, Status};

/// Exit code for a usage or validation error.
pub const EXIT_USAGE: u8 = 2;
/// Exit code for every other failure (and for a watched run that did not succeed).
pub const EXIT_FAILURE: u8 = 1;

/// The user asked for something malformed or incomplete; exit code 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Shorthand for an `Err` carrying a [`UsageError`].
pub fn usage<T>(message: impl Into<String>) -> anyhow::Result<T> {
    Err(UsageError(message.into()).into())
}

/// A gRPC status returned by the coordinator, shown as `<code in words>: <message>`.
#[derive(Debug)]
pub struct StatusError {
    pub code: Code,
    pub message: String,
}

impl From<Status> for StatusError {
    fn from(status: Status) -> Self {
        StatusError {
            code: status.code(),
            message: status.message().trim().to_string(),
        }
    }
}

impl fmt::Display for StatusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message.is_empty() {
            f.write_str(code_words(self.code))
        } else {
            write!(f, "{}: {}", code_words(self.code), self.message)
        }
    }
}

impl std::error::Error for StatusError {}

/// A gRPC code as lowercase words (`not found`, `failed precondition`).
pub fn code_words(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown error",
        Code::InvalidArgument => "invalid argument",
        Code::DeadlineExceeded => "deadline exceeded",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::PermissionDenied => "permission denied",
        Code::ResourceExhausted => "resource exhausted",
        Code::FailedPrecondition => "failed precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out of range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal error",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// The exit code for a failure: 2 for usage and validation errors, 1 otherwise.
pub fn exit_code_for(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if cause.downcast_ref::<UsageError>().is_some() {
            return EXIT_USAGE;
        }
        if let Some(status) = cause.downcast_ref::<StatusError>() {
            return if status.code == Code::InvalidArgument {
                EXIT_USAGE
            } else {
                EXIT_FAILURE
            };
        }
    }
    EXIT_FAILURE
}

/// Whether the failure is a closed stdout (`cdctl ... | head`), which is not worth reporting.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Joins an error and its sources into one line, skipping a source whose text repeats the
/// previous one (transport errors often nest the same words).
pub fn one_line(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        let text = e.to_string();
        if !text.is_empty() && parts.last().is_none_or(|last| !last.contains(&text)) {
            parts.push(text);
        }
        cur = e.source();
    }
    parts.join(": ").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn status_error_reads_as_code_words_and_message() {
        let err = Err::<(), _>(StatusError::from(Status::not_found(
            "pipeline \"x\" does not exist",
        )))
        .context("run start")
        .unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "run start: not found: pipeline \"x\" does not exist"
        );
        assert_eq!(exit_code_for(&err), EXIT_FAILURE);
    }

    #[test]
    fn invalid_argument_and_usage_exit_2() {
        let err = anyhow::Error::new(StatusError::from(Status::invalid_argument("bad")))
            .context("pipeline apply");
        assert_eq!(exit_code_for(&err), EXIT_USAGE);
        let err = usage::<()>("--param needs K=V").unwrap_err();
        assert_eq!(exit_code_for(&err), EXIT_USAGE);
        assert_eq!(exit_code_for(&anyhow::anyhow!("other")), EXIT_FAILURE);
    }

    #[test]
    fn empty_status_message_shows_code_only() {
        let e = StatusError::from(Status::new(Code::PermissionDenied, ""));
        assert_eq!(e.to_string(), "permission denied");
    }
}
