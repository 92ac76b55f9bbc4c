//! The shim's one error type and its one conversion into the ttrpc status containerd reads.
//!
//! Every failure a Task request can meet is an [`Error`]; engine errors are converted into it
//! ([`From<cryo_sandbox::Error>`]), and [`From<Error> for ttrpc::Error`] picks the code the way
//! runc's shim does for the same case: NotFound for an unknown id or a process that is gone
//! (ESRCH), AlreadyExists for an id in use, FailedPrecondition for a wrong state,
//! InvalidArgument for a bad spec or request, Unimplemented, and Unknown for the rest.

use containerd_shim_protos::ttrpc::{self, Code};

/// Result alias of the shim.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a Task request failed on; the message names the object and the cause.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such container or process, or the process is gone.
    #[error("{0}")]
    NotFound(String),
    /// The id is taken.
    #[error("{0}")]
    AlreadyExists(String),
    /// The request does not fit the container's or process's state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The request or the spec is malformed or asks for what cannot be.
    #[error("{0}")]
    InvalidArgument(String),
    /// Not supported by cryo (yet).
    #[error("{0}")]
    Unimplemented(String),
    /// A failure of the shim itself (a task that panicked, stdio that could not be set up).
    #[error("{0}")]
    Internal(String),
    /// The engine's failure (its message names the container, path or syscall).
    #[error(transparent)]
    Engine(#[from] cryo_sandbox::Error),
}

impl Error {
    /// The ttrpc code containerd gets for this error.
    pub fn code(&self) -> Code {
        match self {
            Error::NotFound(_) => Code::NOT_FOUND,
            Error::AlreadyExists(_) => Code::ALREADY_EXISTS,
            Error::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            Error::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            Error::Unimplemented(_) => Code::UNIMPLEMENTED,
            Error::Internal(_) => Code::INTERNAL,
            Error::Engine(source) => engine_code(source),
        }
    }
}

/// The code runc's shim answers for the same engine failure.
fn engine_code(e: &cryo_sandbox::Error) -> Code {
    use cryo_sandbox::Error as E;
    match e {
        E::InvalidSpec(_) => Code::INVALID_ARGUMENT,
        E::WrongState { .. } => Code::FAILED_PRECONDITION,
        // The workload's command or rootfs is missing or unusable: the spec cannot run here.
        E::Rootfs { .. } | E::Exec { .. } => Code::FAILED_PRECONDITION,
        // CRIU missing, or a checkpoint this shim cannot restore.
        E::CriuMissing(_) | E::Checkpoint { .. } => Code::FAILED_PRECONDITION,
        // The process is gone (runc-shim's checkKillError: ESRCH is NotFound).
        E::Sys { source, .. } if *source == nix::Error::ESRCH => Code::NOT_FOUND,
        E::Io { source, .. } if source.raw_os_error() == Some(libc::ESRCH) => Code::NOT_FOUND,
        _ => Code::UNKNOWN,
    }
}

impl From<tokio::task::JoinError> for Error {
    fn from(e: tokio::task::JoinError) -> Self {
        Error::Internal(format!("engine call: {e}"))
    }
}

impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cryo_sandbox::Error as E;

    fn code_of(e: Error) -> (Code, String) {
        match ttrpc::Error::from(e) {
            ttrpc::Error::RpcStatus(s) => (s.code(), s.message().to_string()),
            other => panic!("not a status: {other:?}"),
        }
    }

    fn engine(e: E) -> Code {
        code_of(Error::from(e)).0
    }

    #[test]
    fn shim_errors_keep_their_code_and_message() {
        for (e, code) in [
            (
                Error::NotFound("container c1 not found".into()),
                Code::NOT_FOUND,
            ),
            (
                Error::AlreadyExists("container c1 already exists".into()),
                Code::ALREADY_EXISTS,
            ),
            (
                Error::FailedPrecondition("c1 is running".into()),
                Code::FAILED_PRECONDITION,
            ),
            (
                Error::InvalidArgument("config.json: x".into()),
                Code::INVALID_ARGUMENT,
            ),
            (Error::Unimplemented("restore".into()), Code::UNIMPLEMENTED),
            (Error::Internal("stdio".into()), Code::INTERNAL),
        ] {
            let text = e.to_string();
            assert_eq!(code_of(e), (code, text));
        }
    }

    #[test]
    fn a_gone_process_is_not_found() {
        let esrch = E::sys("kill SIGTERM pid 42", nix::Error::ESRCH);
        let (code, message) = code_of(Error::from(esrch));
        assert_eq!(code, Code::NOT_FOUND);
        assert!(message.contains("pid 42"), "{message}");
        let io = E::io("signal", std::io::Error::from_raw_os_error(libc::ESRCH));
        assert_eq!(engine(io), Code::NOT_FOUND);
    }

    #[test]
    fn a_wrong_state_is_a_failed_precondition() {
        let e = E::WrongState {
            id: "c1".into(),
            status: "stopped".into(),
            op: "pause".into(),
        };
        assert_eq!(engine(e), Code::FAILED_PRECONDITION);
    }

    #[test]
    fn an_invalid_spec_is_an_invalid_argument() {
        assert_eq!(
            engine(E::InvalidSpec("process.args is empty".into())),
            Code::INVALID_ARGUMENT
        );
    }

    #[test]
    fn a_missing_command_or_rootfs_is_a_failed_precondition() {
        let exec = E::Exec {
            cmd: "/no/such".into(),
            reason: "no such file".into(),
        };
        assert_eq!(engine(exec), Code::FAILED_PRECONDITION);
        let rootfs = E::Rootfs {
            path: "/nonexistent".into(),
            reason: "missing".into(),
        };
        assert_eq!(engine(rootfs), Code::FAILED_PRECONDITION);
    }

    #[test]
    fn other_engine_failures_are_unknown_and_keep_their_message() {
        let eperm = E::sys("kill SIGKILL pid 42", nix::Error::EPERM);
        assert_eq!(engine(eperm), Code::UNKNOWN);
        assert_eq!(engine(E::Setup("setresuid: EINVAL".into())), Code::UNKNOWN);
        assert_eq!(engine(E::Init("helper exited".into())), Code::UNKNOWN);
        let (code, message) = code_of(Error::from(E::Setup("exec format error".into())));
        assert_eq!(
            (code, message.as_str()),
            (Code::UNKNOWN, "exec format error")
        );
    }
}
