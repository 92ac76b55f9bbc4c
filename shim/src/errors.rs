//! Mapping of failures to the ttrpc status codes containerd understands (as the runc shim
//! answers them: NotFound for unknown ids, FailedPrecondition for wrong states).

use containerd_shim_protos::ttrpc;

pub fn not_found(what: impl std::fmt::Display) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(ttrpc::Code::NOT_FOUND, what.to_string()))
}

pub fn failed_precondition(what: impl std::fmt::Display) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(
        ttrpc::Code::FAILED_PRECONDITION,
        what.to_string(),
    ))
}

pub fn invalid_argument(what: impl std::fmt::Display) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(
        ttrpc::Code::INVALID_ARGUMENT,
        what.to_string(),
    ))
}

pub fn already_exists(what: impl std::fmt::Display) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(
        ttrpc::Code::ALREADY_EXISTS,
        what.to_string(),
    ))
}

/// An engine failure: its message names the cause; the code follows its kind.
pub fn engine(e: cryo_sandbox::Error) -> ttrpc::Error {
    use cryo_sandbox::Error as E;
    let code = match &e {
        E::InvalidSpec(_) => ttrpc::Code::INVALID_ARGUMENT,
        E::WrongState { .. } => ttrpc::Code::FAILED_PRECONDITION,
        E::Rootfs { .. } | E::Exec { .. } => ttrpc::Code::FAILED_PRECONDITION,
        E::CriuMissing(_) | E::Checkpoint { .. } => ttrpc::Code::FAILED_PRECONDITION,
        _ => ttrpc::Code::UNKNOWN,
    };
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, e.to_string()))
}

/// Any other internal failure.
pub fn internal(what: impl std::fmt::Display) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(ttrpc::Code::INTERNAL, what.to_string()))
}
