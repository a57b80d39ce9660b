//! The driver's error type and its one mapping to gRPC statuses. Task-level errors never use
//! `Unavailable`/`Canceled` (Nomad reads those as "the plugin is going away"). A StartTask error
//! Nomad may retry carries a `RecoverableError{recoverable: true}` as the first status detail.

use bpfexec_proto::{google_rpc, structs};
use prost::Message;
use tonic::{Code, Status};

use crate::config::ConfigError;

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("task {0:?} is not known to this driver (it was never started here, or was destroyed)")]
    NotFound(String),
    #[error("the driver is not configured yet: Nomad has not called SetConfig")]
    NotConfigured,
    #[error("cannot start task {task}: {reason}")]
    Start {
        task: String,
        reason: String,
        recoverable: bool,
    },
    #[error("cannot recover task {task}: {reason}")]
    Recover { task: String, reason: String },
    #[error("task {task} is still running: {hint}")]
    StillRunning { task: String, hint: &'static str },
    #[error("task {0} has already exited")]
    Exited(String),
    #[error("unknown signal {0:?}: use a name such as SIGTERM, SIGHUP or SIGUSR1")]
    BadSignal(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Unsupported(String),
}

impl DriverError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }

    fn code(&self) -> Code {
        match self {
            Self::Config(_) | Self::BadSignal(_) => Code::InvalidArgument,
            Self::NotFound(_) => Code::NotFound,
            Self::NotConfigured
            | Self::Start { .. }
            | Self::StillRunning { .. }
            | Self::Exited(_) => Code::FailedPrecondition,
            Self::Recover { .. } | Self::Io { .. } => Code::Internal,
            Self::Unsupported(_) => Code::Unimplemented,
        }
    }
}

impl From<DriverError> for Status {
    fn from(err: DriverError) -> Self {
        let code = err.code();
        let message = err.to_string();
        if matches!(
            err,
            DriverError::Start {
                recoverable: true,
                ..
            }
        ) {
            recoverable_status(code, message)
        } else {
            Status::new(code, message)
        }
    }
}

/// A status whose first detail is Nomad's `RecoverableError{recoverable: true}`.
fn recoverable_status(code: Code, message: String) -> Status {
    let detail = prost_types::Any {
        type_url: "type.googleapis.com/hashicorp.nomad.plugins.shared.structs.RecoverableError"
            .into(),
        value: structs::RecoverableError { recoverable: true }.encode_to_vec(),
    };
    let rpc = google_rpc::Status {
        code: code as i32,
        message: message.clone(),
        details: vec![detail],
    };
    Status::with_details(code, message, rpc.encode_to_vec().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recoverable_start_errors_carry_the_detail() {
        let st: Status = DriverError::Start {
            task: "t".into(),
            reason: "busy".into(),
            recoverable: true,
        }
        .into();
        assert_eq!(st.code(), Code::FailedPrecondition);
        let rpc = google_rpc::Status::decode(st.details()).expect("details decode");
        assert_eq!(rpc.details.len(), 1);
        assert!(
            rpc.details[0]
                .type_url
                .ends_with("shared.structs.RecoverableError")
        );
        let inner =
            structs::RecoverableError::decode(rpc.details[0].value.as_slice()).expect("inner");
        assert!(inner.recoverable);
    }

    #[test]
    fn plain_errors_have_no_details_and_never_unavailable() {
        let st: Status = DriverError::NotFound("x".into()).into();
        assert_eq!(st.code(), Code::NotFound);
        assert!(st.details().is_empty());
        let st: Status = DriverError::Start {
            task: "t".into(),
            reason: "no such file".into(),
            recoverable: false,
        }
        .into();
        assert_ne!(st.code(), Code::Unavailable);
        assert!(st.details().is_empty());
    }
}
