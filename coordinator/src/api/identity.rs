//! Who is calling: the SPIFFE identity in the client certificate that mutual TLS verified.

use cd_common::certs::{Identity, Role};
use tonic::{Request, Status};

use super::conn_info::ConnInfo;

/// The caller's identity: the one the authorization layer accepted (`authz`), or else the
/// one parsed from its certificate when the connection was accepted.
pub fn identity<T>(req: &Request<T>) -> Option<Identity> {
    if let Some(id) = req.extensions().get::<Identity>() {
        return Some(id.clone());
    }
    req.extensions()
        .get::<ConnInfo>()
        .and_then(|c| c.identity().ok().cloned())
}

/// The caller's certificate serial number (empty when unknown), for logs.
pub fn serial<T>(req: &Request<T>) -> String {
    req.extensions()
        .get::<ConnInfo>()
        .map(|c| c.serial().to_string())
        .unwrap_or_default()
}

/// Refuses an agent that names another agent in its request: an agent acts only as itself
/// (its certificate's name), so it can neither register, heartbeat nor report for another.
pub fn require_agent<T>(req: &Request<T>, claimed: &str) -> Result<(), Status> {
    let id = require_role(req, Role::Agent)?;
    if id.name == claimed {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "{id} may act only as agent {}, not as agent {claimed:?} (field agent)",
            id.name
        )))
    }
}

/// The caller's identity as text (`spiffe://td/role/name`), or `unknown` when the certificate
/// carries none (the authorization layer refuses such callers before any handler runs).
pub fn caller<T>(req: &Request<T>) -> String {
    identity(req).map_or_else(|| "unknown".to_string(), |id| id.to_string())
}

/// Refuses callers whose certificate does not carry `role`.
pub fn require_role<T>(req: &Request<T>, role: Role) -> Result<Identity, Status> {
    check_role(identity(req), role)
}

/// As `require_role`, for an identity taken from the request earlier.
pub fn check_role(caller: Option<Identity>, role: Role) -> Result<Identity, Status> {
    match caller {
        Some(id) if id.role == role => Ok(id),
        Some(id) => Err(Status::permission_denied(format!(
            "{id} may not call this service (role {} required)",
            role.as_str()
        ))),
        None => Err(Status::unauthenticated(
            "the client certificate carries no Conveyor identity",
        )),
    }
}
