//! The control socket's messages (version 1): a request is one JSON object on one line,
//! `{"version":1,"op":"ps"}` or `{"version":1,"op":"fscheckpoint","id":..,"image_path":..,
//! "paths":[..],"leave_running":..,"direct":..}`; the response is one JSON object on one line.
//! The `cryo` CLI mirrors these types.

use serde::{Deserialize, Serialize};

/// The protocol version this shim speaks.
pub const VERSION: u32 = 1;

#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    Ps,
    Fscheckpoint(FscheckpointArgs),
}

#[derive(Debug, Deserialize)]
struct Envelope {
    version: u32,
    #[serde(flatten)]
    request: Request,
}

/// What `cryo fscheckpoint ID` asks.
#[derive(Debug, Deserialize)]
pub struct FscheckpointArgs {
    /// A container id or the pod's sandbox id.
    pub id: String,
    /// The checkpoint directory to create (absolute).
    pub image_path: String,
    /// `/`, a mount path, `all-volumes` or `all-tmpfs`.
    pub paths: Vec<String>,
    #[serde(default)]
    pub leave_running: bool,
    #[serde(default)]
    pub direct: bool,
}

impl Request {
    /// Parse one request line; the error names what is wrong.
    pub fn parse(line: &str) -> Result<Request, String> {
        let env: Envelope =
            serde_json::from_str(line.trim_end()).map_err(|e| format!("bad request: {e}"))?;
        if env.version != VERSION {
            return Err(format!(
                "request version {} is not supported (this shim speaks {VERSION})",
                env.version
            ));
        }
        Ok(env.request)
    }
}

/// One container a shim serves.
#[derive(Debug, Serialize)]
pub struct ContainerInfo {
    pub id: String,
    /// The pod's sandbox id (the container's own id outside CRI).
    pub pod: String,
    /// The CRI container name, empty outside CRI (and for the sandbox container).
    pub name: String,
    pub status: String,
    pub pid: i32,
}

/// One saved section.
#[derive(Debug, Serialize)]
pub struct SectionInfo {
    pub container: String,
    pub path: String,
    pub kind: String,
}

#[derive(Debug, Serialize)]
pub struct Response {
    pub version: u32,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub containers: Vec<ContainerInfo>,
    pub sections: Vec<SectionInfo>,
}

impl Response {
    pub fn ok() -> Response {
        Response {
            version: VERSION,
            ok: true,
            error: None,
            containers: Vec::new(),
            sections: Vec::new(),
        }
    }

    pub fn error(message: String) -> Response {
        Response {
            ok: false,
            error: Some(message),
            ..Response::ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_other_versions_are_refused() {
        assert!(matches!(
            Request::parse(r#"{"version":1,"op":"ps"}"#),
            Ok(Request::Ps)
        ));
        let r = Request::parse(
            r#"{"version":1,"op":"fscheckpoint","id":"a","image_path":"/x","paths":["/"]}"#,
        )
        .unwrap();
        assert!(matches!(r, Request::Fscheckpoint(a) if a.id == "a" && !a.leave_running));
        let e = Request::parse(r#"{"version":2,"op":"ps"}"#).unwrap_err();
        assert!(e.contains("version 2"), "{e}");
        assert!(Request::parse(r#"{"version":1,"op":"rm"}"#).is_err());
    }
}
